"""Greedy generation on SmolLM2-135M: jaxlora's generate against transformers' generate, tokens/s as a ratio.

Both stacks do the same work in one process:

* the same weights: jaxlora loads the SmolLM2-135M-Instruct GGUF (preset ``smollm2-135m``,
  dequantised to float32) and saves it as an HF folder, which transformers' ``LlamaForCausalLM``
  loads (float32, eager CPU, its default SDPA attention and dynamic KV cache);
* the same request: ``batch`` prompts of ``prompt`` random token ids (no padding), ``new`` new
  tokens each, greedy, no EOS stop (transformers gets ``min_new_tokens=new``), so both produce
  exactly ``batch x new`` tokens; the script checks that the tokens agree;
* timing: jaxlora's first call (trace + XLA compile + one run) is reported apart as compile time,
  then the two stacks run in alternating rounds, so load from other processes hits both alike;
  the ratio is computed per round and reported as median [min-max].

    python benchmarks/generate_smollm2.py                  # batch 8, prompt 64, 64 new tokens, 3 rounds
    python benchmarks/generate_smollm2.py --rounds 5 --batch 4

Target (issue 12): jaxlora tokens/s >= 1.5x transformers'. No test asserts on time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

TARGET = 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import jax
    import torch
    import transformers

    import jaxlora.models as jm

    start = time.perf_counter()
    module, params = jm.from_pretrained("smollm2-135m")
    print(f"jaxlora load (GGUF, dequantised): {time.perf_counter() - start:.1f} s")
    folder = jm.save_pretrained(module, params, tempfile.mkdtemp(prefix="smollm2_hf_"))
    reference = transformers.LlamaForCausalLM.from_pretrained(folder).eval()

    rng = np.random.default_rng(0)
    ids = rng.integers(3, module.spec.vocab_size, size=(args.batch, args.prompt)).astype(np.int32)
    mask = np.ones_like(ids)
    torch_ids, torch_mask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

    def run_jax():
        return np.asarray(jax.block_until_ready(jm.generate(module, params, ids, mask, max_new_tokens=args.new)))

    def run_torch():
        with torch.no_grad():
            out = reference.generate(
                input_ids=torch_ids, attention_mask=torch_mask, max_new_tokens=args.new,
                min_new_tokens=args.new, do_sample=False, pad_token_id=0,
            )
        return out[:, args.prompt:].numpy()

    start = time.perf_counter()
    first = run_jax()
    first_call = time.perf_counter() - start
    theirs = run_torch()  # transformers' warm-up (first call allocates its caches)
    agree = float((first == theirs).mean())
    print(f"jaxlora first call (compile + run): {first_call:.1f} s", flush=True)

    tokens = args.batch * args.new
    jax_times, torch_times = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        run_jax()
        jax_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        run_torch()
        torch_times.append(time.perf_counter() - start)
        print(f"round {len(jax_times)}: jaxlora {jax_times[-1]:.2f} s, transformers {torch_times[-1]:.2f} s", flush=True)
    ratios = [t / j for j, t in zip(jax_times, torch_times)]
    steady = statistics.median(jax_times)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}")
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"request: batch {args.batch}, prompt {args.prompt}, {args.new} new tokens, greedy, float32")
    print(f"jaxlora compile (first call minus a steady call): {first_call - steady:.1f} s")
    print(f"greedy tokens equal to transformers': {agree:.1%}")
    print("| stack | time per request (median of rounds) | tokens/s |")
    print("|---|---|---|")
    print(f"| jaxlora generate | {steady:.2f} s | {tokens / steady:.1f} |")
    print(f"| transformers generate | {statistics.median(torch_times):.2f} s | "
          f"{tokens / statistics.median(torch_times):.1f} |")
    median = statistics.median(ratios)
    print(f"speed ratio jaxlora/transformers: {median:.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] over "
          f"{args.rounds} rounds; target >= {TARGET}x: {'met' if median >= TARGET else 'missed'}")


if __name__ == "__main__":
    main()
