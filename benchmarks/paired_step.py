"""Paired A/B timing of two train steps: two processes, one step each in turn.

On a shared machine, load changes from second to second. ``adapter_step.py`` alternates rounds of a
few steps; this script goes further for a single comparison: each side runs in its own worker
process (its own XLA runtime, optionally its own source tree), the parent asks A and B for one step
each in turn (the order flips every pair), and reports the median of the per-pair ratios B / A. A
burst of load then falls on both steps of a pair.

Methods are the names of ``adapter_step.py`` (``"full fine-tuning"``, ``"lora all-linear factored"``,
...). ``--a-tree``/``--b-tree`` put another checkout first on ``PYTHONPATH`` for that side, to measure a
code change (``git worktree add /tmp/before HEAD~1``):

    python benchmarks/paired_step.py --a "full fine-tuning" --b "lora all-linear factored"
    python benchmarks/paired_step.py --a "lora all-linear factored" --a-tree /tmp/before \\
        --b "lora all-linear factored" --pairs 24
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(method: str, batch_size: int, seq: int) -> None:
    """Build the step, warm it up, then time one step per ``step`` line on stdin."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to stderr, replies stay parseable
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, HERE)
    import jax
    import optax

    from adapter_step import METHODS, make_step, synthetic_batch
    from jaxlora import models

    module, frozen = models.from_pretrained("minilm-l6", task="sequence_classification", num_labels=2)
    batch = synthetic_batch(batch_size, seq)
    opt = optax.adamw(1e-4)
    step, trainable, fixed = make_step(module, frozen, METHODS[method], opt)
    state = (trainable, opt.init(trainable))
    rng = jax.random.key(0)
    for i in range(2):
        out = step(*state, fixed, batch, jax.random.fold_in(rng, i))
        state = (out[0], out[1])
    jax.block_until_ready(state)
    reply.write(json.dumps({"ready": True, "jaxlora": sys.modules["jaxlora"].__file__}) + "\n")
    for i, line in enumerate(sys.stdin, start=2):
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        out = step(*state, fixed, batch, jax.random.fold_in(rng, i))
        jax.block_until_ready(out)
        reply.write(json.dumps({"seconds": time.perf_counter() - t0}) + "\n")
        state = (out[0], out[1])


class Side:
    """One worker process and the step times it reported."""

    def __init__(self, method: str, tree: str | None, batch_size: int, seq: int):
        env = dict(os.environ)
        if tree:
            env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(tree), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", method, str(batch_size), str(seq)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env,
        )
        hello = self._read()
        self.source = hello["jaxlora"]
        self.times: list[float] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a worker exited early; run it alone with --worker to see its error")
        return json.loads(line)

    def step(self) -> None:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        self.times.append(self._read()["seconds"])

    def close(self) -> None:
        self.proc.stdin.write("exit\n")
        self.proc.stdin.flush()
        self.proc.wait()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="method of side A (the baseline)")
    parser.add_argument("--b", required=True, help="method of side B")
    parser.add_argument("--a-tree", help="source tree put first on PYTHONPATH for side A")
    parser.add_argument("--b-tree", help="source tree put first on PYTHONPATH for side B")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    args = parser.parse_args()

    sides = [Side(args.a, args.a_tree, args.batch, args.seq), Side(args.b, args.b_tree, args.batch, args.seq)]
    for i in range(args.pairs):
        for side in sides if i % 2 == 0 else sides[::-1]:
            side.step()
    for side in sides:
        side.close()
    a, b = sides
    ratios = [tb / ta for ta, tb in zip(a.times, b.times)]
    print(f"MiniLM-L6, batch {args.batch} x {args.seq}, {args.pairs} pairs, load average {os.getloadavg()[0]:.1f}")
    for name, side in (("A", a), ("B", b)):
        print(f"  {name}: {getattr(args, name.lower())!r} ({side.source}): "
              f"median {statistics.median(side.times):.3f} s, min {min(side.times):.3f} s")
    print(f"  B / A paired median {statistics.median(ratios):.3f}x [{min(ratios):.2f}-{max(ratios):.2f}], "
          f"min / min {min(b.times) / min(a.times):.3f}x")


if __name__ == "__main__":
    main()
