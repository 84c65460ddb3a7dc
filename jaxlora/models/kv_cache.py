"""The KV cache of a decoder: every layer's keys and values in a fixed number of slots.

Decoding with a cache: pass ``cache=init_cache(spec, batch, slots)`` to a causal LM and the call
returns ``(logits, cache)``. The new tokens' keys and values are written at slots
``cache.index ...`` of a fixed-size buffer, and each query attends to the slots up to its own;
``attention_mask`` then covers all ``slots`` (1 for a real token, 0 for padding; future slots are
hidden by causality), so every decode step has the same shapes and compiles once.
:func:`jaxlora.models.generate` drives it.

>>> module, params = jaxlora.models.from_config(jaxlora.models.tiny_config("llama"))
>>> cache = init_cache(module.spec, batch=1, slots=8)
>>> ids = jnp.array([[1, 5, 6]])
>>> logits, cache = module.apply({"params": params}, ids, jnp.ones((1, 8), jnp.int32), cache=cache)
>>> logits.shape, int(cache.index)
((1, 3, 99), 3)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxlora.models import layers

Array = jax.Array


class KVCache(NamedTuple):
    """Keys and values of every layer in a fixed number of slots, and the slot the next token goes to.

    ``keys[i]``/``values[i]``: ``(batch, slots, kv_heads, head_dim)`` of layer ``i``; ``index``: int32 scalar.
    """

    keys: tuple
    values: tuple
    index: Array


def init_cache(spec, batch: int, slots: int) -> KVCache:
    """An empty cache of ``slots`` positions for ``batch`` rows, in the model's computation dtype.

    ``spec`` is a decoder's :class:`~jaxlora.models.llama.DecoderSpec` (``module.spec``): its
    ``num_layers``, ``num_kv_heads``, ``head_dim`` and ``dtype`` size the buffers.

    >>> from jaxlora.models import from_config, tiny_config
    >>> module, params = from_config(tiny_config("llama"))
    >>> cache = init_cache(module.spec, batch=2, slots=16)
    >>> cache.keys[0].shape   # (batch, slots, kv_heads, head_dim)
    (2, 16, 2, 8)
    """
    shape = (batch, slots, spec.num_kv_heads, spec.head_dim)
    zeros = tuple(jnp.zeros(shape, spec.dtype) for _ in range(spec.num_layers))
    return KVCache(zeros, zeros, jnp.zeros((), jnp.int32))


def cached_attention_bias(slot_mask: Array, index: Array, length: int) -> Array:
    """``(batch, 1, length, slots)`` bias: query ``i`` (written at slot ``index + i``) sees slot ``j``
    when ``j <= index + i`` and ``slot_mask[b, j]`` is set.

    >>> (cached_attention_bias(jnp.array([[0, 1, 1, 1]]), jnp.int32(2), 1)[0, 0, 0] == 0).tolist()
    [False, True, True, False]
    """
    slots = slot_mask.shape[-1]
    causal = jnp.arange(slots)[None, :] <= (index + jnp.arange(length))[:, None]
    keep = causal[None, None] & slot_mask.astype(bool)[:, None, None, :]
    return jnp.where(keep, 0.0, layers.MASK_VALUE).astype(jnp.float32)
