"""Two GPU checks of benchmarks/gpu_check.sh: the adapted_matmul forms, and the plan's memory against the real peak.

* ``forms``: :func:`jaxlora.nn.adapted_matmul.adapted_matmul` forward + backward (gradients of
  ``x``, ``a`` and ``b``) in its two forms, ``cpu`` (the XLA:CPU tricks: factor concatenated onto
  the kernel, the optimisation-barrier transpose) and ``plain``, at RoBERTa-base and SmolLM2-135M
  layer shapes, in bf16 and fp32, timed in alternating rounds; prints ms per call and the ratio
  cpu / plain (below 1: the tricks win on this device too).
* ``plan``: ``jaxlora.plan.plan(model, "local")`` compiles the train step for this machine's
  device and predicts its memory; then the same step (the same abstract run, made concrete with
  zeros on the same shardings) runs a few times and the device's ``peak_bytes_in_use`` is read.
  Prints predicted / measured.

    python benchmarks/gpu_check.py forms [--dry]
    python benchmarks/gpu_check.py plan --model roberta-base --batch 16x512 [--dry]

``--dry`` runs the same code on tiny shapes on the CPU, to check that it starts (no timing claims).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's jaxlora

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# (name, tokens, d_in, d_out, rank): the attention and MLP projections of each model at its benchmark batch.
SHAPES = (
    ("roberta-base q (16x512)", 16 * 512, 768, 768, 8),
    ("roberta-base ffn-in (16x512)", 16 * 512, 768, 3072, 8),
    ("smollm2 up_proj (8x512)", 8 * 512, 576, 1536, 8),
    ("smollm2 down_proj (8x512)", 8 * 512, 1536, 576, 8),
)
DRY_SHAPES = (("tiny", 64, 32, 48, 4),)


def _timed(fn, args, steps: int) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps * 1e3


def forms(dry: bool, rounds: int, steps: int) -> None:
    from jaxlora.nn import adapted_matmul as am

    print(f"adapted_matmul forms on {jax.devices()[0].device_kind} (ms per forward+backward; ratio cpu/plain)")
    for dtype in (jnp.bfloat16, jnp.float32):
        for name, tokens, d_in, d_out, rank in DRY_SHAPES if dry else SHAPES:
            keys = jax.random.split(jax.random.key(0), 4)
            x = jax.random.normal(keys[0], (tokens, d_in), dtype)
            kernel = jax.random.normal(keys[1], (d_in, d_out), dtype) * 0.02
            a = jax.random.normal(keys[2], (d_in, rank), dtype) * 0.02
            b = jax.random.normal(keys[3], (rank, d_out), dtype) * 0.02
            fns = {}
            for form in ("cpu", "plain"):
                with am.use_form(form):
                    loss = lambda x, a, b: jnp.sum(am.adapted_matmul(x, kernel, a, b, 2.0).astype(jnp.float32) ** 2)  # noqa: E731
                    fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
                    fn.lower(x, a, b)  # traced inside the form
                    jax.block_until_ready(fn(x, a, b))
                fns[form] = fn
            times = {form: [] for form in fns}
            for _ in range(rounds):  # alternating: load from elsewhere hits both forms alike
                for form, fn in fns.items():
                    times[form].append(_timed(fn, (x, a, b), steps))
            cpu, plain = statistics.median(times["cpu"]), statistics.median(times["plain"])
            print(f"  {jnp.dtype(dtype).name:8s} {name:30s} cpu {cpu:8.3f}  plain {plain:8.3f}  ratio {cpu / plain:.2f}")


def plan_vs_peak(model: str, batch: str, dry: bool, steps: int) -> None:
    from jaxlora.plan import planner
    from jaxlora.training.step import make_train_step

    if dry:
        model, batch = "smollm2-135m", "2x32"
    layers = 2 if dry else None
    predicted = planner.plan(model, "local", batch=batch, layers=layers, dtype="bfloat16")
    print(predicted.text())
    rows, length = planner.parse_batch(batch)
    hf = planner.model_config(model, layers)
    config = planner.run_config(model, hf, batch=(rows, length), rank=16, targets="all-linear")
    run = planner.abstract_run(config, hf, jax.devices())
    step = make_train_step(run.module, run.method, run.optimizer, run.task, run.shardings)

    def zeros(tree, shardings):
        return jax.tree.map(lambda s, sh: jax.device_put(np.zeros(s.shape, s.dtype), sh), tree, shardings)

    state = zeros(run.state, run.shardings.state)
    frozen = zeros(run.frozen, run.shardings.frozen)
    batch_arrays = zeros(run.batch, {k: run.shardings.batch for k in run.batch})
    batch_arrays["attention_mask"] = jnp.ones_like(batch_arrays["attention_mask"])
    for _ in range(steps):
        state, metrics = step(state, frozen, batch_arrays)
    jax.block_until_ready(metrics)
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    total = predicted.per_chip_bytes["total"]
    if peak:
        print(f"plan vs real peak: predicted {total / 2**30:.3f} GiB, measured peak_bytes_in_use {peak / 2**30:.3f} GiB "
              f"(predicted / measured {total / peak:.2f})")
    else:
        print(f"plan vs real peak: predicted {total / 2**30:.3f} GiB; this backend reports no peak_bytes_in_use "
              f"({jax.default_backend()}), so there is nothing to compare (a GPU does report it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=("forms", "plan"))
    parser.add_argument("--model", default="roberta-base", help="a known config (jaxlora.models.known_configs)")
    parser.add_argument("--batch", default="16x512")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dry", action="store_true", help="tiny shapes on the CPU: check that it starts")
    args = parser.parse_args()
    if args.check == "forms":
        forms(args.dry, 2 if args.dry else args.rounds, 2 if args.dry else args.steps)
    else:
        plan_vs_peak(args.model, args.batch, args.dry, 2 if args.dry else 3)


if __name__ == "__main__":
    main()
