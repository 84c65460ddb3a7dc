"""Cost of verified checkpoints: save and restore with and without the state digest, on MiniLM-L6 states.

Two states as training saves them (trainable leaves + adamw moments + step + rng):

* ``adapter``: LoRA r=8 on query and value plus the classifier head (the default run);
* ``full``: full fine-tuning, every parameter (the largest state a MiniLM run checkpoints).

Each checkpoint is written synchronously (``async_save=False``, so the write is timed) into a fresh
folder, then restored; the digest's share is the difference between ``verify=True`` and ``False``.
Prints per-checkpoint medians and the ratio verified / unverified (measured in this run).

    python benchmarks/checkpoint_verify.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's jaxlora

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxlora  # noqa: E402
from jaxlora.training import checkpoint as ckpt_lib  # noqa: E402


def states():
    module, frozen = jaxlora.models.from_pretrained("minilm-l6", task="sequence_classification", num_labels=2)
    frozen = jax.device_get(frozen)
    cfg = jaxlora.AdapterConfig("lora", rank=8, targets=("query", "value"), trainable=("classifier",))
    adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    out = {}
    for name, trainable in (("adapter", adapter.trainable), ("full", {"lowrank": {}, "full": frozen})):
        trainable = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32) + 0.01, trainable)
        opt_state = optax.adamw(1e-3).init(trainable)
        out[name] = {"step": jnp.int32(7), "trainable": trainable, "opt_state": opt_state,
                     "rng": jax.random.key_data(jax.random.key(1))}
    return out


def timed(state, verify: bool, root: str) -> tuple[float, float]:
    folder = tempfile.mkdtemp(dir=root)
    ckpt = ckpt_lib.Checkpointer(folder, keep=1, async_save=False, verify=verify)
    t0 = time.perf_counter()
    ckpt.save(1, state, {"loader": [0, 1, 0]})
    ckpt.wait()
    t1 = time.perf_counter()
    restored = ckpt.restore(1, ckpt_lib.abstract_like(state))
    jax.block_until_ready(restored.state)
    t2 = time.perf_counter()
    assert restored.verified == verify
    ckpt.close()
    shutil.rmtree(folder)
    return t1 - t0, t2 - t1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = tempfile.mkdtemp()
    print(f"{'state':8} {'MB':>7} {'leaves':>6} | {'save s':>7} {'+verify':>7} {'ratio':>5} | "
          f"{'restore s':>9} {'+verify':>7} {'ratio':>5} | {'digest s':>8}")
    for name, state in states().items():
        mb = sum(np.dtype(x.dtype).itemsize * x.size for x in jax.tree.leaves(state)) / 1e6
        timed(state, True, root)  # warm-up: orbax, tensorstore, file cache
        runs = {v: [timed(state, v, root) for _ in range(args.repeats)] for v in (False, True)}
        save = {v: statistics.median(r[0] for r in runs[v]) for v in runs}
        load = {v: statistics.median(r[1] for r in runs[v]) for v in runs}
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            ckpt_lib.state_digest(state)
        digest = (time.perf_counter() - t0) / args.repeats
        print(f"{name:8} {mb:7.1f} {len(jax.tree.leaves(state)):6d} | {save[False]:7.3f} {save[True]:7.3f} "
              f"{save[True] / save[False]:5.2f} | {load[False]:9.3f} {load[True]:7.3f} {load[True] / load[False]:5.2f} "
              f"| {digest:8.3f}")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
