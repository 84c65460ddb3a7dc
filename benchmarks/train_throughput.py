"""Training throughput of the full loop vs the bare jitted step: LoRA and CondLoRA, MiniLM-L6 on SST-2.

For each variant, two measurements over the *same* sequence of batches (the offline config's
seeded, length-grouped SST-2 order):

* **step**: only the jitted train step, on batches already on the device, dispatched back to back
  after every padded length has been compiled;
* **loop**: :func:`jaxlora.training.train` for the same number of steps (batch assembly, transfer,
  loss read-back, metrics.jsonl, the progress bar, checkpoints every ``--checkpoint-every`` steps),
  its ``train_examples_per_s`` (validation, compile steps and the final test excluded).

Pairs of (step, loop) measurements alternate ``--repeats`` times. The share of step time spent
outside the jitted step is ``1 - median(loop_rate / step_rate)``: what the
host costs on top of the computation itself. The loop also reports the share of its time the host
was busy (``host_share_of_step_time``), which overlaps device compute and so bounds the cost above.

    python benchmarks/train_throughput.py --variants lora condlora --steps 100 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from configs import glue  # noqa: E402
from jaxlora import data as jdata  # noqa: E402
from jaxlora import training  # noqa: E402
from jaxlora.training import sharding as sh  # noqa: E402


def offline_config(variant: str, args) -> "ml_collections.ConfigDict":  # noqa: F821
    """The offline config of ``variant`` with the benchmark's sizes."""
    config = glue.get_config(f"method={variant},offline")
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
    """Examples/s of the jitted step alone over the loop's batch sequence, every shape compiled first.

    Steps are dispatched back to back and waited for once at the end, as a loop with no host work would.
    """
    run = training.build(config)
    step_fn = training.make_train_step(run.module, run.method, run.optimizer, run.task, run.shardings)
    batches = run.task.train_batches(run.train_data, jdata.LoaderState(seed=int(config.seed)), int(config.batch_size))
    host = [next(batches)[0] for _ in range(run.total_steps)]
    device = [sh.put_batch(b, run.shardings.batch, run.task.device_keys) for b in host]
    state, shapes = run.initial_state, {}
    for batch, on_device in zip(host, device):  # compile every padded length once
        shapes.setdefault(batch["input_ids"].shape, on_device)
    for on_device in shapes.values():
        state, metrics = step_fn(state, run.frozen, on_device)
    jax.block_until_ready((state, device))
    examples = sum(int(b["example_mask"].sum()) for b in host)
    t0 = time.perf_counter()
    for on_device in device:
        state, metrics = step_fn(state, run.frozen, on_device)
    jax.block_until_ready(metrics)
    return examples / (time.perf_counter() - t0), len(shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["lora", "condlora"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="alternating step/loop pairs; medians reported")
    args = parser.parse_args()
    # Repeats rebuild the same programs: a persistent cache makes them compile once.
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jaxlora-bench-cache-"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

    rows = []
    for variant in args.variants:
        step_rates, loop_rates, host_shares = [], [], []
        for _ in range(args.repeats):  # alternate, so that load from other processes hits both alike
            step_rate, shapes = bare_step_rate(offline_config(variant, args))
            with tempfile.TemporaryDirectory() as workdir:
                results = training.train(offline_config(variant, args), workdir)
            step_rates.append(step_rate)
            loop_rates.append(results["train_examples_per_s"])
            host_shares.append(results["host_share_of_step_time"])
        ratios = [loop / step for loop, step in zip(loop_rates, step_rates)]
        rows.append({
            "variant": variant,
            "step_examples_per_s": statistics.median(step_rates),
            "loop_examples_per_s": statistics.median(loop_rates),
            "outside_step_share": 1.0 - statistics.median(ratios),
            "host_busy_share": statistics.median(host_shares),
            "padded_lengths": shapes,
            "trainable_params": results["trainable_params"],
            "runs": {"step": step_rates, "loop": loop_rates},
        })
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}; "
          f"MiniLM-L6, SST-2, batch {args.batch_size}, max length {args.max_length} (length-grouped buckets), "
          f"{args.steps} steps, checkpoint every {args.checkpoint_every}, medians of {args.repeats}\n")
    print("| variant | trainable | jitted step alone (ex/s) | full loop (ex/s) | time outside the step | host busy |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['trainable_params']:,} | {r['step_examples_per_s']:.1f} | "
              f"{r['loop_examples_per_s']:.1f} | {100 * r['outside_step_share']:.1f}% | {100 * r['host_busy_share']:.1f}% |")


if __name__ == "__main__":
    main()
