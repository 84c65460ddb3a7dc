"""Rotary position embeddings (RoPE) as transformers computes them, and the position ids they read.

:func:`rope_settings` reads the RoPE settings of a config of either transformers generation
(``default``, ``linear`` and ``llama3`` frequency scaling); :func:`rope_inverse_frequencies`
turns them into the per-pair frequencies in transformers' order of float32 operations (so the
angles agree bit for bit); :func:`rotary_tables` gives the ``cos``/``sin`` tables of a batch's
positions, built once per forward pass and shared by every layer, and :func:`apply_rotary`
rotates queries or keys with them (HF's rotate-half convention).

Position ids: without any, a decoder counts ``0..L-1`` on every row, exactly what
transformers' ``LlamaModel.forward`` does; with left padding, :func:`position_ids_from_mask`
(what ``generate`` does) starts each row at its first real token.

>>> rope = rope_settings(jaxlora.models.tiny_config("llama"))
>>> cos, sin = rotary_tables(8, rope, position_ids_from_mask(jnp.array([[0, 1, 1]])))
>>> cos.shape
(1, 3, 8)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

ROPE_TYPES = ("default", "linear", "llama3")


def rope_settings(config) -> dict:
    """RoPE settings from a config of either transformers generation.

    transformers 5 keeps everything in ``config.rope_parameters``
    (``rope_type``, ``rope_theta``, ``factor``, ...); 4.x wrote ``rope_theta``
    and a ``rope_scaling`` dict whose type key was ``type`` or ``rope_type``.

    >>> from jaxlora.models.hf_config import HFConfig
    >>> rope_settings(HFConfig.from_dict({"model_type": "llama", "rope_theta": 500000.0}))["rope_theta"]
    500000.0
    >>> rope_settings(HFConfig.from_dict({"model_type": "llama", "rope_scaling": {"type": "linear", "factor": 2.0}}))
    {'rope_type': 'linear', 'rope_theta': 10000.0, 'factor': 2.0}
    """
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict):
        params = {**scaling, **params}
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        theta = 10000.0
    if rope_type not in ROPE_TYPES:
        raise ValueError(
            f"RoPE type {rope_type!r} is not supported by jaxlora's Llama; supported: {ROPE_TYPES}."
        )
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported by jaxlora's Llama.")
    settings = {"rope_type": rope_type, "rope_theta": float(theta)}
    if rope_type in ("linear", "llama3"):
        settings["factor"] = float(params["factor"])
    if rope_type == "llama3":
        settings["low_freq_factor"] = float(params["low_freq_factor"])
        settings["high_freq_factor"] = float(params["high_freq_factor"])
        settings["original_max_position_embeddings"] = int(
            params.get("original_max_position_embeddings", config.max_position_embeddings)
        )
    return settings


def rope_inverse_frequencies(head_dim: int, rope: dict) -> np.ndarray:
    """``(head_dim // 2,)`` float32 inverse frequencies, computed in the same order of operations as transformers.

    >>> rope_inverse_frequencies(4, {"rope_type": "default", "rope_theta": 10000.0})
    array([1.  , 0.01], dtype=float32)
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(rope["rope_theta"]) ** exponents)).astype(np.float32)
    if rope["rope_type"] == "linear":
        inv_freq = inv_freq / np.float32(rope["factor"])
    elif rope["rope_type"] == "llama3":
        factor = np.float32(rope["factor"])
        low, high = np.float32(rope["low_freq_factor"]), np.float32(rope["high_freq_factor"])
        old_len = np.float32(rope["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = np.float32(2 * math.pi) / inv_freq
        # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = np.where(medium, blended, scaled)
    return inv_freq.astype(np.float32)


def position_ids_from_mask(attention_mask: Array) -> Array:
    """Positions counting only kept tokens (0 at each row's first real token), as ``generate`` uses.

    >>> position_ids_from_mask(jnp.array([[0, 0, 1, 1, 1]]))
    Array([[1, 1, 0, 1, 2]], dtype=int32)
    """
    mask = attention_mask.astype(jnp.int32)
    positions = jnp.cumsum(mask, axis=-1) - 1
    return jnp.where(mask == 0, 1, positions)



def rotary_tables(head_dim: int, rope: dict, position_ids: Array, dtype=jnp.float32) -> tuple[Array, Array]:
    """``cos`` and ``sin`` of shape ``(batch|1, length, head_dim)`` for the given positions, in ``dtype``.

    >>> cos, sin = rotary_tables(4, {"rope_type": "default", "rope_theta": 10000.0}, jnp.arange(3)[None])
    >>> cos.shape, float(cos[0, 0, 0]), float(sin[0, 0, 0])
    ((1, 3, 4), 1.0, 0.0)
    """
    inv_freq = jnp.asarray(rope_inverse_frequencies(head_dim, rope))
    freqs = position_ids.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate ``(batch, length, heads, head_dim)`` by the tables (HF's rotate-half convention).

    >>> cos, sin = rotary_tables(2, {"rope_type": "default", "rope_theta": 10000.0}, jnp.array([[0, 1]]))
    >>> np.round(np.asarray(apply_rotary(jnp.ones((1, 2, 1, 2)), cos, sin)[0, :, 0]), 3)   # position 0 is left alone
    array([[ 1.   ,  1.   ],
           [-0.301,  1.382]], dtype=float32)
    """
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
