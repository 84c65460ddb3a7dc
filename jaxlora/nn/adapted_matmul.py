"""``x @ K + s * (h @ a) @ b`` with a backward pass written for skinny factors.

Every factored adapter ends in this product: ``K`` is the frozen ``(d_in, d_out)``
kernel, ``a`` ``(d_in, r)`` and ``b`` ``(r, d_out)`` are the variant's factors,
``h`` is the low-rank input (``x`` itself, or ``x`` after dropout) and ``s`` the
scale. Autodiff gets the arithmetic right but not the cost on XLA:CPU:

* ``da = h.T @ (g @ b.T)`` is a dot whose *output* is the tall ``(d_in, r)``
  matrix; XLA:CPU runs that shape 3-14x slower than the same product computed as
  ``(gb.T @ h).T`` (measured: 3.9 ms against 0.28 ms for ``d_in = 1536`` and 2048
  tokens). XLA's simplifier rewrites the transposed form back, so it is kept
  apart with an optimisation barrier.
* With ``h is x``, the input gradient ``g @ K.T + s * (g @ b.T) @ a.T`` is one
  product with the factor appended to the kernel, ``[g, s*gb] @ [K.T; a.T]``,
  instead of two products and an add over a ``(tokens, d_in)`` array; it copies
  ``g``, so it is used when ``g`` is the narrower side (``d_out <= d_in``).
* ``K`` is frozen in factored mode: its gradient ``x.T @ g`` is returned so the
  function stays correct under any ``jax.grad``, and XLA removes it when nobody
  asks for it (``jax.grad`` with respect to the adapter never does).

The forward pass can likewise add the low-rank term inside the main product,
``[x, s*z] @ [K; b]``, which avoids writing and re-reading a ``(tokens, d_out)``
low-rank product; it pays a copy of ``x``, so it is used when ``x`` is the
narrower side (``d_in <= d_out``). Both concatenations are used on one device only (see
:func:`concatenate_factors`): on a mesh they cost collectives. Each choice was kept because it made the MiniLM
train step faster in paired runs (about 5% each with LoRA on all linear layers;
docs/BENCHMARKS.md).

Both tricks were measured on XLA:CPU only, so they run only there: the *form* is ``"cpu"`` (the
tricks) or ``"plain"`` (autodiff's own products), ``"auto"`` picking ``"cpu"`` when JAX's default
backend is the CPU. :func:`use_form` sets it while a step is traced; ``jaxlora.plan`` compiles a TPU
step both ways and keeps the better one.

All operands must share one floating dtype (the caller casts); with mixed
dtypes (bf16 frozen weights, fp32 factors) :class:`jaxlora.nn.Dense` keeps the
plain autodiff path so the low-rank term stays in fp32.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import jax
import jax.numpy as jnp

Array = jax.Array

FORMS = ("auto", "cpu", "plain")
_FORM = threading.local()


def form() -> str:
    """The form traced now: ``"cpu"`` (the XLA:CPU tricks) or ``"plain"``; see :func:`use_form`.

    >>> form() == ("cpu" if jax.default_backend() == "cpu" else "plain")
    True
    """
    chosen = getattr(_FORM, "value", "auto")
    if chosen == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "plain"
    return chosen


@contextlib.contextmanager
def use_form(name: str):
    """Trace adapted matmuls in form ``name`` (``"auto"``, ``"cpu"`` or ``"plain"``) inside the block.

    The form is read when a function is traced: build and lower (or first call) a jitted step inside.

    >>> with use_form("plain"):
    ...     form()
    'plain'
    """
    if name not in FORMS:
        raise ValueError(f"adapted_matmul form {name!r}: use one of {FORMS}.")
    previous = getattr(_FORM, "value", "auto")
    _FORM.value = name
    try:
        yield
    finally:
        _FORM.value = previous


def _lowrank_grad(h: Array, gb: Array) -> Array:
    """``h.T @ gb``; in the CPU form computed as ``(gb.T @ h).T`` (see the module docstring)."""
    if form() != "cpu":
        return h.T @ gb
    return jax.lax.optimization_barrier(gb.T @ h).T


def concatenate_factors() -> bool:
    """Whether to append factors to the kernel (``[x, s*z] @ [K; b]``) instead of two products.

    Only in the CPU form, on one device: with the kernel split over a mesh, the concatenation of a
    sharded ``K`` with a differently sharded factor makes XLA reshard (and rematerialise) the whole
    kernel every step; the plain two-product form needs no more collectives than ``x @ K`` itself.

    >>> concatenate_factors() == (jax.device_count() == 1 and form() == "cpu")
    True
    """
    return form() == "cpu" and jax.device_count() == 1


def _forward(x: Array, h: Array | None, kernel: Array, a: Array, b: Array, scale: float):
    z = (x if h is None else h) @ a
    if kernel.shape[0] <= kernel.shape[1] and concatenate_factors():
        y = jnp.concatenate([x, scale * z], axis=-1) @ jnp.concatenate([kernel, b], axis=0)
    else:
        y = x @ kernel + (scale * z) @ b
    return y, z


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _adapted_matmul(x, h, kernel, a, b, scale):
    return _forward(x, h, kernel, a, b, scale)[0]


def _adapted_matmul_fwd(x, h, kernel, a, b, scale):
    y, z = _forward(x, h, kernel, a, b, scale)
    return y, (x, h, kernel, a, b, z)


def _adapted_matmul_bwd(scale, residuals, g):
    x, h, kernel, a, b, z = residuals
    gb = g @ b.T
    if h is None:
        if kernel.shape[1] <= kernel.shape[0] and concatenate_factors():
            dx = jnp.concatenate([g, scale * gb], axis=-1) @ jnp.concatenate([kernel.T, a.T], axis=0)
        else:
            dx = g @ kernel.T + (scale * gb) @ a.T
        dh = None
    else:
        dx = g @ kernel.T
        dh = (scale * gb) @ a.T
    da = scale * _lowrank_grad(x if h is None else h, gb)
    db = scale * (z.T @ g)
    dkernel = x.T @ g
    return dx, dh, dkernel, da, db


_adapted_matmul.defvjp(_adapted_matmul_fwd, _adapted_matmul_bwd)


def adapted_matmul(
    x: Array, kernel: Array, a: Array, b: Array, scale: float, lowrank_input: Array | None = None
) -> Array:
    """``x @ kernel + scale * (lowrank_input @ a) @ b`` on 2-D ``x``, never forming ``kernel + s*a@b``.

    Args:
      x: ``(tokens, d_in)`` input.
      kernel: ``(d_in, d_out)`` frozen kernel.
      a, b: ``(d_in, r)`` and ``(r, d_out)`` factors.
      scale: static scale ``s``.
      lowrank_input: what the factors see instead of ``x`` (``x`` after dropout);
        ``None`` means ``x`` itself, which lets the backward pass fuse more.

    All arrays must have the same dtype. Differentiable in every array argument.

    >>> x, kernel, a, b = jnp.ones((2, 3)), jnp.eye(3), jnp.ones((3, 1)), jnp.ones((1, 3))
    >>> adapted_matmul(x, kernel, a, b, 2.0).tolist()     # x @ kernel + 2.0 * (x @ a) @ b
    [[7.0, 7.0, 7.0], [7.0, 7.0, 7.0]]
    """
    if x.ndim != 2:
        raise ValueError(f"adapted_matmul takes (tokens, features) inputs; got shape {x.shape}.")
    dtypes = {x.dtype, kernel.dtype, a.dtype, b.dtype} | ({lowrank_input.dtype} if lowrank_input is not None else set())
    if len(dtypes) != 1:
        raise ValueError(f"adapted_matmul needs one dtype for all operands; got {sorted(map(str, dtypes))}.")
    return _adapted_matmul(x, lowrank_input, kernel, a, b, float(scale))
