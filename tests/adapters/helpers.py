"""Small models and trees shared by the adapter tests."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxlora
from jaxlora.adapters import get_variant
from jaxlora.nn import Dense

def builtin_variants():
    """The variants jaxlora itself registers (not those a test registers), sorted by name."""
    return [n for n in jaxlora.registered_variants() if type(get_variant(n)).__module__.startswith("jaxlora.")]


def option_cases(name):
    """Option sets that cover a variant: its defaults, then each other value of each option
    (the field's ``metadata["choices"]``, or the other truth value of a bool)."""
    cases = [{}]
    for field in dataclasses.fields(get_variant(name).Options):
        choices = field.metadata.get("choices", (False, True) if isinstance(field.default, bool) else ())
        cases += [{field.name: value} for value in choices if value != field.default]
    return cases


# (variant, AdapterConfig keyword arguments) for every built-in variant and option value.
ALL_VARIANTS = [(n, {"options": o} if o else {}) for n in builtin_variants() for o in option_cases(n)]
VARIANT_IDS = ["-".join([v, *(f"{k}={x}" for k, x in kw.get("options", {}).items())]) for v, kw in ALL_VARIANTS]


class Block(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x, deterministic=True):
        q = Dense(self.width, name="query")(x, deterministic)
        v = Dense(self.width, name="value")(x, deterministic)
        x = x + jnp.tanh(q) * v
        h = jax.nn.gelu(Dense(2 * self.width, name="intermediate")(x, deterministic))
        return x + Dense(self.width, name="output")(h, deterministic)


class TinyEncoder(nn.Module):
    """Attention-shaped blocks of jaxlora Dense layers and a classifier."""

    width: int = 16
    layers: int = 2

    @nn.compact
    def __call__(self, x, deterministic=True):
        for i in range(self.layers):
            x = Block(self.width, name=f"layer_{i}")(x, deterministic)
        return Dense(3, name="classifier")(x, deterministic)


def tiny_model(width=16, layers=2, batch=5, seed=0):
    """(module, frozen params, inputs)."""
    model = TinyEncoder(width, layers)
    x = jax.random.normal(jax.random.key(seed + 1), (batch, width))
    frozen = nn.unbox(model.init(jax.random.key(seed), x)["params"])
    return model, frozen, x


def perturbed(adapter, seed=7, scale=0.1):
    """The adapter with every trainable leaf moved off its init (zero factors included)."""
    leaves, treedef = jax.tree.flatten(adapter.trainable)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    moved = [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]
    return adapter._replace(trainable=jax.tree.unflatten(treedef, moved))


def rel_err(x, y):
    return float(jnp.linalg.norm((x - y).ravel()) / jnp.linalg.norm(y.ravel()))


def config(variant, rank=4, alpha=8.0, **kw):
    return jaxlora.AdapterConfig(variant, rank=rank, alpha=alpha, targets=("query", "value"), **kw)
