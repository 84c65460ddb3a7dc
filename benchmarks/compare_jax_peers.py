"""jaxlora against qwix (Google's JAX LoRA library) on the same toy transformer, Linen and NNX.

One process, one model written with stock Flax layers (``nn.MultiHeadDotProductAttention`` +
``nn.Dense``; ``nnx.MultiHeadAttention`` + ``nnx.Linear``), LoRA r=8 on q, k, v, out and both MLP
layers, AdamW, one jitted train step per method:

* ``jaxlora factored``: ``jaxlora.apply(..., mode="factored")`` under ``jaxlora.intercept()``;
* ``jaxlora merged``: ``mode="merged"`` (the stock layers see ``K + s * a @ b``);
* ``qwix``: ``qwix.apply_lora_to_model`` with a ``LoraProvider`` matching the same layers.

Steps are timed in alternating rounds (the order rotates each round) so that load from other
processes falls on every method alike; each method's time is the median over rounds of its mean
step time in the round, and ratios are taken against numbers from the same run. Peak memory is
XLA's own account of the compiled step (arguments + outputs + temporaries, minus aliased buffers).

    python benchmarks/compare_jax_peers.py                       # d=256, 4 blocks, batch 16 x 128
    python benchmarks/compare_jax_peers.py --rounds 3 --steps 2  # shorter
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's jaxlora

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxlora

LORA_LAYERS = r".*(query|key|value|out|fc1|fc2)$"


def linen_model(d: int, blocks: int, heads: int) -> nn.Module:
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = x + nn.MultiHeadDotProductAttention(num_heads=heads, name="attn")(nn.LayerNorm()(x))
            h = nn.gelu(nn.Dense(4 * d, name="fc1")(nn.LayerNorm()(x)))
            return x + nn.Dense(d, name="fc2")(h)

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i in range(blocks):
                x = Block(name=f"layers_{i}")(x)
            return nn.Dense(2, name="classifier")(x.mean(axis=1))

    return Model()


def nnx_model(d: int, blocks: int, heads: int, rngs: nnx.Rngs) -> nnx.Module:
    class Block(nnx.Module):
        def __init__(self):
            self.norm1, self.norm2 = nnx.LayerNorm(d, rngs=rngs), nnx.LayerNorm(d, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False, rngs=rngs)
            self.fc1, self.fc2 = nnx.Linear(d, 4 * d, rngs=rngs), nnx.Linear(4 * d, d, rngs=rngs)

        def __call__(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x))))

    class Model(nnx.Module):
        def __init__(self):
            self.layers = nnx.List([Block() for _ in range(blocks)])
            self.classifier = nnx.Linear(d, 2, rngs=rngs)

        def __call__(self, x):
            for block in self.layers:
                x = block(x)
            return self.classifier(x.mean(axis=1))

    return Model()


def _loss(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _train_step(loss_fn, tx):
    """``(trainable, opt_state, frozen, x, y) -> (trainable, opt_state, loss)``; frozen is an argument."""

    def step(trainable, opt_state, frozen, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen, x, y)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def jaxlora_method(api: str, mode: str, args, tx):
    cfg = jaxlora.AdapterConfig("lora", rank=args.rank, alpha=2 * args.rank, targets="all-linear")
    x = jnp.ones((args.batch, args.seq, args.d))
    if api == "linen":
        model = linen_model(args.d, args.blocks, args.heads)
        frozen = model.init(jax.random.key(0), x)["params"]
        forward = lambda params, x: model.apply({"params": params}, x)  # noqa: E731
    else:
        graphdef, frozen = jaxlora.nnx.split(nnx_model(args.d, args.blocks, args.heads, nnx.Rngs(0)))
        forward = lambda params, x: jaxlora.nnx.merge(graphdef, params)(x)  # noqa: E731
    adapter = jaxlora.init(jax.random.key(1), frozen, cfg)

    def loss_fn(trainable, frozen, x, y):
        params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), cfg, mode=mode)
        with jaxlora.intercept():
            return _loss(forward(params, x), y)

    return _train_step(loss_fn, tx), adapter.trainable, frozen


def qwix_method(api: str, args, tx):
    import qwix

    provider = qwix.LoraProvider(module_path=LORA_LAYERS, rank=args.rank, alpha=2 * args.rank)
    x = jnp.ones((args.batch, args.seq, args.d))
    if api == "linen":
        model = qwix.apply_lora_to_model(linen_model(args.d, args.blocks, args.heads), provider)
        params = model.init(jax.random.key(0), x)["params"]
        flat = jaxlora.adapters.targets.flatten(params)
        lora = {p: v for p, v in flat.items() if "lora" in str(p[-1])}
        frozen = {p: v for p, v in flat.items() if p not in lora}
        trainable, frozen = jaxlora.adapters.targets.unflatten(lora), jaxlora.adapters.targets.unflatten(frozen)

        def loss_fn(trainable, frozen, x, y):
            merged = jaxlora.adapters.targets.unflatten(
                {**jaxlora.adapters.targets.flatten(frozen), **jaxlora.adapters.targets.flatten(trainable)})
            return _loss(model.apply({"params": merged}, x), y)
    else:
        model = qwix.apply_lora_to_model(nnx_model(args.d, args.blocks, args.heads, nnx.Rngs(0)), provider, x,
                                         rngs=nnx.Rngs(1))
        graphdef, trainable, frozen = nnx.split(model, nnx.LoRAParam, ...)

        def loss_fn(trainable, frozen, x, y):
            return _loss(nnx.merge(graphdef, trainable, frozen)(x), y)

    return _train_step(loss_fn, tx), trainable, frozen


def _peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def run(api: str, args) -> dict:
    tx = optax.adamw(1e-3)
    x = jax.random.normal(jax.random.key(2), (args.batch, args.seq, args.d))
    y = jax.random.randint(jax.random.key(3), (args.batch,), 0, 2)
    methods = {
        "jaxlora factored": lambda: jaxlora_method(api, "factored", args, tx),
        "jaxlora merged": lambda: jaxlora_method(api, "merged", args, tx),
        "qwix": lambda: qwix_method(api, args, tx),
    }
    state, peak = {}, {}
    for name, build in methods.items():
        step, trainable, frozen = build()
        opt_state = tx.init(trainable)
        compiled = step.lower(trainable, opt_state, frozen, x, y).compile()
        peak[name] = _peak_bytes(compiled)
        trainable, opt_state, _ = compiled(trainable, opt_state, frozen, x, y)  # warm-up
        state[name] = [compiled, trainable, opt_state, frozen]
    times = {name: [] for name in methods}
    names = list(methods)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            compiled, trainable, opt_state, frozen = state[name]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                trainable, opt_state, loss = compiled(trainable, opt_state, frozen, x, y)
            jax.block_until_ready(loss)
            times[name].append((time.perf_counter() - t0) / args.steps)
            state[name][1:3] = [trainable, opt_state]
    step_ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return {
        "api": api,
        "step_ms": step_ms,
        "peak_mb": {name: b / 2**20 for name, b in peak.items()},
        "factored/qwix": step_ms["jaxlora factored"] / step_ms["qwix"],
        "factored/merged": step_ms["jaxlora factored"] / step_ms["jaxlora merged"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--api", choices=("linen", "nnx", "both"), default="both")
    args = parser.parse_args(argv)
    print(f"# jax {jax.__version__}, {jax.devices()[0].platform}, d={args.d} blocks={args.blocks} "
          f"batch={args.batch}x{args.seq} rank={args.rank}, {args.rounds} rounds x {args.steps} steps")
    for api in (("linen", "nnx") if args.api == "both" else (args.api,)):
        result = run(api, args)
        print(json.dumps(result))
        print(f"{api}: " + ", ".join(f"{k} {v:.1f} ms ({result['peak_mb'][k]:.0f} MB)" for k, v in result["step_ms"].items())
              + f"; factored/qwix {result['factored/qwix']:.2f}, factored/merged {result['factored/merged']:.2f}")


if __name__ == "__main__":
    main()
