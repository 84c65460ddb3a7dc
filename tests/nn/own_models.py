"""Small transformers written the way Flax's own examples write them (stock layers only).

Shared by the intercept, NNX and sharding tests: a Linen model from
``nn.MultiHeadDotProductAttention`` + ``nn.Dense``, a Linen model made of
``nn.Einsum`` (one of its kernels with the input axis in the middle), and an NNX
model from ``nnx.MultiHeadAttention`` and ``nnx.Linear`` inside ``nnx.List``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import jaxlora

D, HEADS, HEAD_DIM, BLOCKS = 16, 2, 8, 2
BATCH, LENGTH = 2, 5
ATTENTION = ("query", "key", "value", "out")
MLP = ("fc1", "fc2")


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS, name="attn")(x)
        h = nn.gelu(nn.Dense(2 * D, name="fc1")(x))
        return x + nn.Dense(D, name="fc2")(h)


class LinenStack(nn.Module):
    """``BLOCKS`` blocks named ``layers_<i>`` and a classifier head."""

    block: type

    @nn.compact
    def __call__(self, x):
        for i in range(BLOCKS):
            x = self.block(name=f"layers_{i}")(x)
        return nn.Dense(2, name="classifier")(x.mean(axis=1))


class EinsumBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        q = nn.Einsum((D, HEADS, HEAD_DIM), "btd,dnh->btnh", name="query")(x)
        # Heads first, input axis in the middle: its layout comes from the equation.
        k = nn.Einsum((HEADS, D, HEAD_DIM), "btd,ndh->btnh", name="key")(x)
        v = nn.Einsum((D, HEADS, HEAD_DIM), "btd,dnh->btnh", name="value")(x)
        weights = jax.nn.softmax(jnp.einsum("btnh,bsnh->bnts", q, k) / HEAD_DIM**0.5)
        o = jnp.einsum("bnts,bsnh->btnh", weights, v)
        x = x + nn.Einsum((HEADS, HEAD_DIM, D), "btnh,nhd->btd", name="out")(o)
        h = nn.gelu(nn.Einsum((D, 2 * D), "btd,df->btf", name="fc1")(x))
        return x + nn.Einsum((2 * D, D), "btf,fd->btd", name="fc2")(h)


def LinenModel():  # noqa: N802  (reads as a model class at call sites)
    return LinenStack(LinenBlock)


def EinsumModel():  # noqa: N802
    return LinenStack(EinsumBlock)


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.attn = nnx.MultiHeadAttention(num_heads=HEADS, in_features=D, decode=False, rngs=rngs)
        self.mlp = nnx.List([nnx.Linear(D, 2 * D, rngs=rngs), nnx.Linear(2 * D, D, rngs=rngs)])

    def __call__(self, x):
        x = x + self.attn(x)
        return x + self.mlp[1](nnx.gelu(self.mlp[0](x)))


class NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([NNXBlock(rngs) for _ in range(BLOCKS)])
        self.classifier = nnx.Linear(D, 2, rngs=rngs)

    def __call__(self, x):
        for block in self.layers:
            x = block(x)
        return self.classifier(x.mean(axis=1))


def inputs(seed=0):
    return jax.random.normal(jax.random.key(seed), (BATCH, LENGTH, D))


class OwnModel:
    """One of the models above as ``frozen`` params plus ``forward(params, x)`` under intercept."""

    def __init__(self, kind):
        self.kind = kind
        x = inputs()
        self.kernel_axes = {}
        if kind == "nnx":
            self.graphdef, self.frozen = jaxlora.nnx.split(NNXModel(nnx.Rngs(0)))
        else:
            self.module = LinenStack({"linen": LinenBlock, "einsum": EinsumBlock}[kind])
            self.frozen = self.module.init(jax.random.key(0), x)["params"]
            if kind == "einsum":
                self.kernel_axes = jaxlora.kernel_axes(self.module.init, jax.random.key(0), x)

    def forward(self, params, x):
        with jaxlora.intercept():
            if self.kind == "nnx":
                return jaxlora.nnx.merge(self.graphdef, params)(x)
            return self.module.apply({"params": params}, x)

    def expected_targets(self):
        """Module paths all-linear must find: q, k, v, out and the MLP of every block."""
        if self.kind == "nnx":
            return {f"layers/{i}/{m}" for i in range(BLOCKS) for m in
                    [f"attn/{name}" for name in ATTENTION] + ["mlp/0", "mlp/1"]}
        attention = "attn/" if self.kind == "linen" else ""
        return {f"layers_{i}/{m}" for i in range(BLOCKS) for m in
                [attention + name for name in ATTENTION] + list(MLP)}
