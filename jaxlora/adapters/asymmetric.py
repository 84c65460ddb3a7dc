"""Asymmetric LoRA (Zhu et al., ICML 2024): train one factor, freeze a random other.

* **B-only** (the paper's method): ``a`` is a Haar-random ``(d_in, r)`` matrix
  with orthonormal columns, frozen; ``b = 0`` trains. ``r * d_out`` trainable
  parameters per matrix, half of LoRA's for square matrices.
* **A-only** (the paper's ablation): ``b`` is a random ``(r, d_out)`` matrix with
  orthonormal rows, frozen; ``a = 0`` trains. ``r * d_in`` parameters.

The frozen random factor belongs to the adapter (``Adapter.fixed``): it is saved
with it, since a reloaded adapter with another draw computes another function.
Each matrix draws its own factor from a key derived from its path.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxlora.adapters.base import Variant, path_rng, random_orthonormal, register
from jaxlora.adapters.lora import LoRAKernel


@register
class BOnly(Variant):
    """Frozen orthonormal ``a``, trained ``b`` (zero-init).

    >>> frozen = {"query": {"kernel": jnp.ones((6, 4))}}
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig("bonly", rank=2, targets=("query",)))
    >>> a = adapter.fixed["query"]["a"]                   # frozen, orthonormal columns
    >>> bool(jnp.allclose(a.T @ a, jnp.eye(2), atol=1e-6)), adapter.trainable["lowrank"]["query"]["b"].shape
    (True, (2, 4))
    """

    name = "bonly"

    def init(self, rng, targets, config):
        trainable, fixed = {}, {}
        for path, t in targets.items():
            fixed[path] = {"a": random_orthonormal(path_rng(rng, path), t.d_in, t.rank)}
            trainable[path] = {"b": jnp.zeros((t.rank, t.d_out), jnp.float32)}
        return trainable, fixed

    def node(self, target, kernel, trainable, fixed, config):
        a, b = fixed[target.path]["a"], trainable[target.path]["b"]
        return LoRAKernel(kernel, a, b, scale=target.scale, dropout_rate=config.dropout)


@register
class AOnly(Variant):
    """Trained ``a`` (zero-init), frozen ``b`` with orthonormal rows.

    >>> frozen = {"query": {"kernel": jnp.ones((6, 4))}}
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig("aonly", rank=2, targets=("query",)))
    >>> b = adapter.fixed["query"]["b"]                   # frozen, orthonormal rows
    >>> bool(jnp.allclose(b @ b.T, jnp.eye(2), atol=1e-6)), adapter.trainable["lowrank"]["query"]["a"].shape
    (True, (6, 2))
    """

    name = "aonly"

    def init(self, rng, targets, config):
        trainable, fixed = {}, {}
        for path, t in targets.items():
            fixed[path] = {"b": random_orthonormal(path_rng(rng, path), t.d_out, t.rank).T}
            trainable[path] = {"a": jnp.zeros((t.d_in, t.rank), jnp.float32)}
        return trainable, fixed

    def node(self, target, kernel, trainable, fixed, config):
        a, b = trainable[target.path]["a"], fixed[target.path]["b"]
        return LoRAKernel(kernel, a, b, scale=target.scale, dropout_rate=config.dropout)
