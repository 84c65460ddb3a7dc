"""LoRA's expressive power on the Transformer network (TFN) of Zeng & Lee (ICLR 2024).

The model (as in the paper: no residual connections, no LayerNorm). An input is a matrix
``X`` of shape ``(D, N)``, one token per column. Block ``l`` with ``H`` heads computes

    A_l(Z)  = sum_h W_O^{h} W_V^{h} Z softmax((W_K^{h} Z)^T (W_Q^{h} Z))      (softmax over each column)
    Z_l     = W_2 relu(W_1 A_l(Z_{l-1}) + b_1 1^T) + b_2 1^T

with every weight ``D x D`` (each head works in the full width ``D``), ``Z_0 = X``, and the network
returns ``W_out Z_L``.

The construction adapts ``W_Q, W_K, W_V, W_O`` of every block, ``W_2`` of the last block and
``W_out`` with rank-``R`` updates, and replaces the FFN biases. It keeps the invariant that the adapted
hidden state is a fixed invertible map of the target's, ``Z_l = G_l Z_bar_l`` with
``G_l = W_2 W_bar_2^{-1}`` (``G_0 = I``). For each block and head:

- scores: ``(W_K + dK)^T (W_Q + dQ) = G^{-T} W_bar_K^T W_bar_Q G^{-1}``, a two-factor linear
  construction (frozen chain ``[W_Q, W_K^T]``), so the attention pattern equals the target's;
- values: ``(W_O + dO)(W_V + dV) = W_1^{-1} W_bar_1 W_bar_O W_bar_V G^{-1}``, so that
  ``W_1 A_l = W_bar_1 A_bar_l``; then ``b_1 = b_bar_1`` makes the ReLU input equal the target's;
- FFN output: ``b_2 = W_2 W_bar_2^{-1} b_bar_2`` (blocks before the last), which gives
  ``Z_l = G_l Z_bar_l``; the last block adapts ``[W_2, W_out]`` towards ``W_bar_out W_bar_2`` and sets
  ``b_2`` so that ``W_out' b_2 = W_bar_out b_bar_2``.

A product of two ``D x D`` factors is reachable exactly at rank ``ceil(D / 2)``, hence the paper's
rank ``D / 2``. Below it each product carries the error ``sigma_{2R+1}`` of its error matrix, which the
result reports. Arrays are float64 numpy; :func:`tfn_forward` also accepts ``xp=jax.numpy``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.linalg

from jaxlora.theory import linear

__all__ = [
    "TFNBlock",
    "TFN",
    "TFNConstruction",
    "tfn_forward",
    "tfn_construction",
    "random_tfn",
]


class TFNBlock(NamedTuple):
    """One attention + FFN block. Head weights are stacked: ``query``, ``key``, ``value``, ``out``
    have shape ``(H, D, D)``; ``ffn1``, ``ffn2`` are ``(D, D)``; ``bias1``, ``bias2`` are ``(D,)``."""

    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    out: np.ndarray
    ffn1: np.ndarray
    bias1: np.ndarray
    ffn2: np.ndarray
    bias2: np.ndarray


class TFN(NamedTuple):
    """A TFN: a list of :class:`TFNBlock` and the output matrix ``W_out`` ``(D, D)``."""

    blocks: list
    output: np.ndarray


class TFNConstruction(NamedTuple):
    """Result of :func:`tfn_construction`.

    Attributes:
      model: the adapted TFN.
      deltas: a :class:`TFN`-shaped pytree of the weight updates (zeros where nothing is adapted,
        FFN biases hold the bias change); every adapted matrix has rank <= R.
      product_errors: predicted spectral-norm error of each two-factor product, keyed like
        ``("block", l, "scores", h)``, ``("block", l, "values", h)`` and ``("output",)``; all 0 when
        ``2 R >= D``.
    """

    model: TFN
    deltas: TFN
    product_errors: dict


def _softmax_columns(scores, xp):
    """Softmax over axis -2 (the key tokens of each query column)."""
    if xp is not np:
        import jax  # only when running under JAX; its softmax keeps the max shift out of the gradient

        return jax.nn.softmax(scores, axis=-2)
    shifted = scores - np.max(scores, axis=-2, keepdims=True)
    weights = np.exp(shifted)
    return weights / np.sum(weights, axis=-2, keepdims=True)


def tfn_forward(model: TFN, x, xp=np):
    """Runs the TFN on a batch ``x`` of shape ``(batch, D, N)``; returns ``(batch, D, N)``.

    Example:
      >>> model = random_tfn(np.random.default_rng(0), width=4, depth=1, heads=2)
      >>> tfn_forward(model, np.ones((3, 4, 5))).shape
      (3, 4, 5)
    """
    # Token-major internally, (batch, N, D): every weight then multiplies one long (batch * N, D)
    # matrix. Scores use the merged bilinear form Z^T (W_K^T W_Q) Z and values W_O W_V Z (the same
    # numbers in another order): on CPU this halves the cost of training under jax.vmap, where the
    # token-by-token contractions become many tiny matrix products.
    hidden = xp.swapaxes(x, 1, 2)
    for block in model.blocks:
        bilinear = xp.einsum("hji,hjk->hik", block.key, block.query)  # W_K^T W_Q per head
        transformed = xp.einsum("bnk,hik->bhni", hidden, bilinear)
        scores = xp.einsum("bmi,bhni->bhmn", hidden, transformed)  # (key token m, query token n)
        pattern = _softmax_columns(scores, xp)
        values = xp.einsum("bmj,hij->bhmi", hidden, block.out @ block.value)
        attended = xp.einsum("bhmn,bhmi->bni", pattern, values)
        inner = xp.maximum(attended @ block.ffn1.T + block.bias1, 0.0)
        hidden = inner @ block.ffn2.T + block.bias2
    return xp.swapaxes(hidden @ model.output.T, 1, 2)


def _right_solve(matrix, a):
    """``matrix @ a^{-1}`` via a solve."""
    return scipy.linalg.solve(a.T, matrix.T).T


def _as_tfn(model, name):
    if not isinstance(model, TFN):
        raise ValueError(f"{name} must be a jaxlora.theory.TFN(blocks=[TFNBlock, ...], output=...), "
                         f"got {type(model).__name__}.")
    blocks = [TFNBlock(*[np.asarray(leaf, np.float64) for leaf in block]) for block in model.blocks]
    if not blocks:
        raise ValueError(f"{name} has no blocks; a TFN needs at least one TFNBlock.")
    return TFN(blocks, np.asarray(model.output, np.float64))


def _check_compatible(frozen, target):
    if len(frozen.blocks) != len(target.blocks):
        raise ValueError(
            f"The TFN construction maps a frozen TFN onto a target of the same depth; got "
            f"{len(frozen.blocks)} frozen and {len(target.blocks)} target blocks.")
    for index, (f, t) in enumerate(zip(frozen.blocks, target.blocks)):
        for field in TFNBlock._fields:
            if getattr(f, field).shape != getattr(t, field).shape:
                raise ValueError(
                    f"Block {index} field {field!r}: frozen shape {getattr(f, field).shape} differs from "
                    f"target shape {getattr(t, field).shape}; both TFNs need the same width D and heads H.")
        dim = f.ffn1.shape[0]
        if f.query.ndim != 3 or f.query.shape[1:] != (dim, dim):
            raise ValueError(f"Block {index}: head weights must have shape (H, D, D), got {f.query.shape}.")


def tfn_construction(frozen: TFN, target: TFN, rank: int) -> TFNConstruction:
    """Rank-``rank`` updates (and new FFN biases) adapting a frozen TFN towards a target TFN.

    Exact (up to float64 rounding) at ``rank >= ceil(D / 2)`` when the frozen ``W_1``, ``W_2``,
    ``W_out`` and the target ``W_bar_2`` are invertible (true for random weights).

    Example:
      >>> rng = np.random.default_rng(0)
      >>> frozen, target = random_tfn(rng, 4, 1, 2), random_tfn(rng, 4, 1, 2)
      >>> adapted = tfn_construction(frozen, target, rank=2).model
      >>> x = rng.normal(size=(3, 4, 5))
      >>> bool(np.allclose(tfn_forward(adapted, x), tfn_forward(target, x)))
      True
    """
    frozen, target = _as_tfn(frozen, "frozen"), _as_tfn(target, "target")
    _check_compatible(frozen, target)
    dim = frozen.output.shape[0]
    heads = frozen.blocks[0].query.shape[0]
    errors = {}
    blocks, delta_blocks = [], []
    g_inverse = np.eye(dim)  # G_{l-1}^{-1}: adapted hidden state = G Z_bar
    last = len(frozen.blocks) - 1
    output = frozen.output
    delta_output = np.zeros((dim, dim))
    for index, (f, t) in enumerate(zip(frozen.blocks, target.blocks)):
        new = {name: np.array(getattr(f, name)) for name in ("query", "key", "value", "out")}
        for h in range(heads):
            # Scores: W_K'^T W_Q' must equal G^{-T} W_bar_K^T W_bar_Q G^{-1}.
            score_target = g_inverse.T @ t.key[h].T @ t.query[h] @ g_inverse
            scores = linear.linear_construction_details([f.query[h], f.key[h].T], score_target, rank)
            new["query"][h] = f.query[h] + scores.deltas[0]
            new["key"][h] = f.key[h] + scores.deltas[1].T
            errors[("block", index, "scores", h)] = scores.predicted_error
            # Values: W_O' W_V' must equal W_1^{-1} W_bar_1 W_bar_O W_bar_V G^{-1}.
            value_target = scipy.linalg.solve(f.ffn1, t.ffn1 @ t.out[h] @ t.value[h] @ g_inverse)
            values = linear.linear_construction_details([f.value[h], f.out[h]], value_target, rank)
            new["value"][h] = f.value[h] + values.deltas[0]
            new["out"][h] = f.out[h] + values.deltas[1]
            errors[("block", index, "values", h)] = values.predicted_error
        bias1 = t.bias1
        ffn2 = f.ffn2
        if index < last:
            g = _right_solve(f.ffn2, t.ffn2)  # G_l = W_2 W_bar_2^{-1}
            bias2 = g @ t.bias2
            g_inverse = _right_solve(t.ffn2, f.ffn2)  # W_bar_2 W_2^{-1}
        else:
            # The last block's W_2 and the output matrix form one more two-factor product.
            tail = linear.linear_construction_details([f.ffn2, frozen.output], target.output @ t.ffn2, rank)
            ffn2 = f.ffn2 + tail.deltas[0]
            output = frozen.output + tail.deltas[1]
            delta_output = tail.deltas[1]
            errors[("output",)] = tail.predicted_error
            bias2 = scipy.linalg.solve(output, target.output @ t.bias2)
        block = TFNBlock(new["query"], new["key"], new["value"], new["out"], f.ffn1, bias1, ffn2, bias2)
        blocks.append(block)
        delta_blocks.append(TFNBlock(*[np.asarray(b) - np.asarray(a) for a, b in zip(f, block)]))
    return TFNConstruction(TFN(blocks, output), TFN(delta_blocks, delta_output), errors)


def random_tfn(rng: np.random.Generator, width: int, depth: int, heads: int,
               attention_std: float = 1.0) -> TFN:
    """A random TFN: attention weights ``N(0, attention_std^2)``; FFN and output weights and biases
    with PyTorch's default ``nn.Linear`` init ``U(+-1/sqrt(width))`` (the paper's experiments).

    Example:
      >>> model = random_tfn(np.random.default_rng(0), width=4, depth=2, heads=2)
      >>> len(model.blocks), model.blocks[0].query.shape
      (2, (2, 4, 4))
    """
    bound = 1.0 / math.sqrt(width)

    def uniform(*shape):
        return rng.uniform(-bound, bound, shape)

    def normal():
        return attention_std * rng.normal(size=(heads, width, width))

    blocks = [TFNBlock(normal(), normal(), normal(), normal(), uniform(width, width), uniform(width),
                       uniform(width, width), uniform(width)) for _ in range(depth)]
    return TFN(blocks, uniform(width, width))
