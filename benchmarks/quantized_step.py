"""QLoRA on CPU: bytes of the frozen kernels and the train step's time, int8 / nf4 against bf16.

MiniLM-L6 (the real checkpoint, offline) in bfloat16, LoRA r=8 on every linear layer, factored; the
task head trains in full and stays bf16. Three frozen trees of the same weights: as loaded (bf16),
``jaxlora.quantize(..., "int8")`` and ``jaxlora.quantize(..., "nf4")`` (block 64, float32 scales).
The step is ``benchmarks/adapter_step.py``'s (frozen weights an argument, adamw, dropout on).

Bytes are counted exactly. Times: alternating rounds (bf16, int8, nf4, then the next round), the
median step of each round, and the ratio of each quantized step to the bf16 step of the same round;
the median of those ratios is printed with its [min-max] spread. On a shared machine the load moves
between rounds; the per-round ratios are what to read.

    python benchmarks/quantized_step.py --batch 4 --seq 64 --rounds 3 --steps 3   # 3 min on 2 busy cores
    python benchmarks/quantized_step.py                 # batch 8 x 128, 5 rounds x 4 steps: longer, use the heavy lock
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # adapter_step.py, and this checkout's jaxlora

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxlora  # noqa: E402
from adapter_step import make_step, synthetic_batch  # noqa: E402
from jaxlora import models  # noqa: E402
from jaxlora.adapters.targets import flatten, join  # noqa: E402
from jaxlora.nn.quantize import QuantizedKernel, quantized_paths  # noqa: E402

KINDS = ("int8", "nf4")


def kernel_bytes(frozen, paths) -> int:
    flat = {join(p): leaf for p, leaf in flatten(frozen).items()}
    return sum(flat[p].nbytes if isinstance(flat[p], QuantizedKernel) else np.asarray(flat[p]).nbytes for p in paths)


def tree_bytes(frozen) -> int:
    return sum(leaf.nbytes if isinstance(leaf, QuantizedKernel) else np.asarray(leaf).nbytes
               for leaf in flatten(frozen).values())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side and round")
    parser.add_argument("--block", type=int, default=64)
    args = parser.parse_args()

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initialised .* weights not in the checkpoint")  # the fresh head
        module, bf16 = models.from_pretrained("minilm-l6", task="sequence_classification", num_labels=2,
                                              dtype=jnp.bfloat16)
    bf16 = jax.device_get(bf16)
    cfg = jaxlora.AdapterConfig("lora", rank=8, alpha=16, targets="all-linear", trainable=("classifier",))
    trees = {"bf16": bf16}
    for kind in KINDS:
        trees[kind] = jaxlora.quantize(bf16, kind, args.block, skip=("classifier",))
    paths = quantized_paths(trees["nf4"])

    base_kernels, base_total = kernel_bytes(bf16, paths), tree_bytes(bf16)
    print(f"\n{len(paths)} quantized kernels (embeddings, norms, biases and the head stay bf16), block {args.block}")
    print(f"{'frozen':<8}{'kernel bytes':>14}{'x bf16':>9}{'all frozen bytes':>19}{'x bf16':>9}")
    for name, tree in trees.items():
        k, t = kernel_bytes(tree, paths), tree_bytes(tree)
        print(f"{name:<8}{k:>14,}{k / base_kernels:>9.3f}{t:>19,}{t / base_total:>9.3f}")

    batch = synthetic_batch(args.batch, args.seq)
    opt = optax.adamw(1e-4)
    sides = {}
    for name, tree in trees.items():
        step, trainable, frozen = make_step(module, jax.device_put(tree), (cfg, "factored"), opt)
        state = (trainable, opt.init(trainable))
        t0 = time.perf_counter()
        out = step(*state, frozen, batch, jax.random.key(0))
        jax.block_until_ready(out)
        sides[name] = [step, (out[0], out[1]), frozen]
        print(f"{name}: compiled and ran the first step in {time.perf_counter() - t0:.1f} s, loss {float(out[2]):.4f}")

    medians = {name: [] for name in trees}
    for r in range(args.rounds):
        for name in trees:
            step, state, frozen = sides[name]
            times = []
            for i in range(args.steps):
                t0 = time.perf_counter()
                out = step(*state, frozen, batch, jax.random.key(r * 100 + i))
                jax.block_until_ready(out)
                times.append(time.perf_counter() - t0)
                state = (out[0], out[1])
            sides[name][1] = state
            medians[name].append(statistics.median(times))

    print(f"\ntrain step, batch {args.batch} x {args.seq}, {args.rounds} rounds x {args.steps} steps")
    print(f"{'frozen':<8}{'median step (ms)':>18}{'x bf16 (median of rounds)':>28}{'[min-max]':>16}")
    for name in trees:
        ratios = [m / b for m, b in zip(medians[name], medians["bf16"])]
        print(f"{name:<8}{1e3 * statistics.median(medians[name]):>18.1f}{statistics.median(ratios):>28.3f}"
              f"{f'[{min(ratios):.2f}-{max(ratios):.2f}]':>16}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
