"""Training throughput of the full loop vs the bare jitted step: LoRA and CondLoRA, MiniLM-L6 on SST-2.

For each variant, two measurements over the *same* sequence of batches (the offline config's
seeded, length-grouped SST-2 order):

* **step**: only the jitted train step, on batches already on the device, each step timed to
  ``block_until_ready``; the first step of every padded length (its compile) is left out;
* **loop**: :func:`jaxlora.training.train` for the same number of steps (batch assembly, transfer,
  loss read-back, metrics.jsonl, the progress bar, checkpoints every ``--checkpoint-every`` steps),
  its ``train_examples_per_s`` (validation, compile steps and the final test excluded).

The share of step time spent outside the jitted step is ``1 - loop_rate / step_rate``: what the
host costs on top of the computation itself. The loop also reports the share of its time the host
was busy (``host_share_of_step_time``), which overlaps device compute and so bounds the cost above.

    python benchmarks/train_throughput.py --variants lora condlora --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import common  # noqa: E402
from jaxlora import data as jdata  # noqa: E402
from jaxlora import training  # noqa: E402
from jaxlora.training import sharding as sh  # noqa: E402


def offline_config(variant: str, args) -> "ml_collections.ConfigDict":  # noqa: F821
    """The offline config of ``variant`` with the benchmark's sizes."""
    rates = common.CONDLORA_LEARNING_RATES if variant == "condlora" else common.LORA_LEARNING_RATES
    config = common.get_config("offline", variant, rates, offline_learning_rate=1e-3)
    config.max_steps = args.steps
    config.batch_size = args.batch_size
    config.max_length = args.max_length
    config.eval_every = args.steps
    config.max_eval_examples = 64
    config.log_every = 10
    config.checkpoint.every = args.checkpoint_every
    config.export = False
    config.plot = False
    config.progress_bar = True
    return config


def bare_step_rate(config) -> tuple[float, int]:
    """Examples/s of the jitted step alone over the loop's batch sequence (compiles excluded)."""
    run = training.build(config)
    step_fn = training.make_train_step(run.module, run.adapter_config, run.optimizer, run.task.is_regression,
                                       run.shardings)
    batches = jdata.iterate(run.train_data, jdata.LoaderState(seed=int(config.seed)), int(config.batch_size),
                            buckets=run.buckets, group_by_length=bool(config.group_by_length))
    host = [next(batches)[0] for _ in range(run.total_steps)]
    device = [sh.put_batch(b, run.shardings.batch) for b in host]
    jax.block_until_ready(device)
    state, seen, examples, seconds = run.initial_state, set(), 0, 0.0
    for batch, on_device in zip(host, device):
        t0 = time.perf_counter()
        state, metrics = step_fn(state, run.frozen, on_device)
        jax.block_until_ready(metrics)
        elapsed = time.perf_counter() - t0
        shape = batch["input_ids"].shape
        if shape in seen:
            examples += int(batch["example_mask"].sum())
            seconds += elapsed
        seen.add(shape)
    return examples / seconds, len(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["lora", "condlora"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    args = parser.parse_args()

    rows = []
    for variant in args.variants:
        config = offline_config(variant, args)
        step_rate, shapes = bare_step_rate(config)
        with tempfile.TemporaryDirectory() as workdir:
            results = training.train(offline_config(variant, args), workdir)
        loop_rate = results["train_examples_per_s"]
        rows.append({
            "variant": variant,
            "step_examples_per_s": step_rate,
            "loop_examples_per_s": loop_rate,
            "outside_step_share": 1.0 - loop_rate / step_rate,
            "host_busy_share": results["host_share_of_step_time"],
            "padded_lengths": shapes,
            "trainable_params": results["trainable_params"],
        })
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}; "
          f"MiniLM-L6, SST-2, batch {args.batch_size}, max length {args.max_length} (length-grouped buckets), "
          f"{args.steps} steps, checkpoint every {args.checkpoint_every}\n")
    print("| variant | trainable | jitted step alone (ex/s) | full loop (ex/s) | time outside the step | host busy |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['trainable_params']:,} | {r['step_examples_per_s']:.1f} | "
              f"{r['loop_examples_per_s']:.1f} | {100 * r['outside_step_share']:.1f}% | {100 * r['host_busy_share']:.1f}% |")


if __name__ == "__main__":
    main()
