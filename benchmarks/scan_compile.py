"""Compile time of a LoRA train step, unrolled against ``scan_layers=True``, at two depths.

A tiny model (hidden 32) makes compilation, not arithmetic, the cost: the step is
``jax.value_and_grad`` of the loss through ``jaxlora.apply`` (LoRA r=8, all-linear), jitted
with the frozen params as an argument, lowered and compiled fresh for each setting
(nothing cached). Each setting is compiled ``--reps`` times, alternating, and the median is
reported with the ratio to the unrolled model of the same depth, measured in the same run.

    python benchmarks/scan_compile.py                          # BERT and Llama, 2 and 12 layers
    python benchmarks/scan_compile.py --families llama --layers 12 32 --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's jaxlora

import jax
import jax.numpy as jnp
import optax

import jaxlora
from jaxlora import models

TASKS = {"bert": "sequence_classification", "llama": "causal_lm"}


def compile_seconds(family: str, layers: int, scan: bool) -> float:
    config = models.tiny_config(family, num_hidden_layers=layers)
    module, frozen = models.from_config(config, task=TASKS[family], num_labels=2, scan_layers=scan)
    cfg = jaxlora.AdapterConfig("lora", rank=8, alpha=16, targets="all-linear",
                                layer_stacks=models.layer_stacks(module))
    adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    ids = jnp.ones((8, 64), jnp.int32)

    def loss(trainable, frozen, ids):
        params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), cfg)
        logits = module.apply({"params": params}, ids, jnp.ones_like(ids))
        labels = ids[:, 1:] if logits.ndim == 3 else jnp.zeros(ids.shape[0], jnp.int32)
        logits = logits[:, :-1] if logits.ndim == 3 else logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    step = jax.jit(jax.value_and_grad(loss))
    start = time.perf_counter()
    step.lower(adapter.trainable, frozen, ids).compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["bert", "llama"], choices=sorted(TASKS))
    parser.add_argument("--layers", nargs="+", type=int, default=[2, 12])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, load average {os.getloadavg()[0]:.1f}")
    times: dict[tuple, list[float]] = {}
    for _ in range(args.reps):  # alternating, so machine noise hits every setting alike
        for family in args.families:
            for layers in args.layers:
                for scan in (False, True):
                    jax.clear_caches()
                    times.setdefault((family, layers, scan), []).append(compile_seconds(family, layers, scan))
    print(f"{'model':<8}{'layers':>7}{'unrolled s':>12}{'scan s':>9}{'scan/unrolled':>15}")
    for family in args.families:
        for layers in args.layers:
            unrolled = statistics.median(times[family, layers, False])
            scanned = statistics.median(times[family, layers, True])
            print(f"{family:<8}{layers:>7}{unrolled:>12.2f}{scanned:>9.2f}{scanned / unrolled:>15.2f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}; medians of {args.reps} compiles each")


if __name__ == "__main__":
    main()
