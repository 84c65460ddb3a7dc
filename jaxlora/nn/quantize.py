"""Quantised frozen kernels (QLoRA): blockwise int8 or 4-bit NormalFloat codes, dequantised on the fly.

QLoRA (Dettmers et al., 2023) keeps the frozen weights of a LoRA run in 4 bits and dequantises each
kernel right before its product; only the adapter trains, in full precision, and no gradient of the
frozen weight is ever needed. :func:`quantize` does this to a params tree: every linear kernel
becomes a :class:`QuantizedKernel`, a pytree node that :class:`jaxlora.nn.Dense` (and stock Flax
layers, inside or outside :func:`jaxlora.intercept`) reads as the array it stands for. Adapters are
applied on top exactly as on plain kernels (``jaxlora.apply(quantized_frozen, adapter, config)``):
inside the jitted step each layer dequantises its ``K``, then runs the same factored product.

The format. A kernel of shape ``(..., n)`` is cut into blocks of ``block_size`` consecutive numbers
along its **last axis** (never across other axes); each block keeps one absmax scale
``c = max |w|`` in float32, and each number one code:

* ``"int8"``: symmetric absmax, ``q = round(127 * w / c)`` as int8, read back as ``c * q / 127``:
  the error is at most half a step, ``c / 254``.
* ``"nf4"``: the 16 NormalFloat levels of the QLoRA paper (quantiles of a standard normal, scaled
  to ``[-1, 1]``, with an exact zero), ``q = argmin_i |w / c - NF4[i]|``, read back as
  ``c * NF4[q]``: the error is at most half the gap between the two levels around ``w / c``, times
  ``c``. Two codes share a byte (number ``2j`` in the low nibble, ``2j + 1`` in the high one), so
  the codes are ``(..., n / 2)`` uint8.

Bytes per number at block 64: int8 ``1 + 4/64``, nf4 ``0.5 + 4/64``, that is 0.53x and 0.28x of a
bf16 kernel, scales included (float32 scales; QLoRA's double quantisation of the scales, which
would save another 0.06x, is not done).

Layout. The codes keep the kernel's axes (the last one halved for nf4) and the scales too (the last
one divided by ``block_size``), so a node splits over a device mesh along the kernel's own axes,
output axis included, and each shard dequantises locally. A stack of per-layer nodes (``nn.scan``'s
leading layer axis) is a node whose arrays all have that leading axis: its static metadata is the
per-layer kernel's, and :func:`dequantize` gives the stacked kernels.

>>> frozen = {"attention": {"query": {"kernel": jax.random.normal(jax.random.key(0), (64, 128))}},
...           "embeddings": {"embedding": jnp.ones((10, 64))}}
>>> q = jaxlora.quantize(frozen, "nf4")
>>> jaxlora.nn.quantize.quantized_paths(q)                  # embeddings stay as they are
('attention/query/kernel',)
>>> node = q["attention"]["query"]["kernel"]
>>> node.codes.shape, node.codes.dtype, node.scales.shape, node.shape
((64, 64), dtype('uint8'), (64, 2), (64, 128))
>>> node.nbytes / (64 * 128 * 2)                          # of a bf16 kernel
0.28125
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxlora.adapters.base import AdaptedKernel
from jaxlora.adapters.targets import flatten, join, matches_leaf
from jaxlora.util.trees import unflatten

__all__ = ["KINDS", "NF4_LEVELS", "QuantizedKernel", "dequantize", "is_quantized", "quantize", "quantized_paths"]

Array = jax.Array
KINDS = ("int8", "nf4")
INT8_MAX = 127
# The NormalFloat4 data type of QLoRA (Dettmers et al., 2023, Appendix E): an asymmetric set of
# normal quantiles with 8 positive levels, 7 negative ones and an exact zero.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
_SCALE_DTYPE = jnp.float32


@struct.dataclass
class QuantizedKernel:
    """A frozen kernel as blockwise codes and absmax scales; reads as the array it stands for.

    Attributes:
      codes: int8 ``(*lead, *shape[:-1], n)`` (int8) or packed uint8 ``(*lead, *shape[:-1], n / 2)`` (nf4).
      scales: float32 ``(*lead, *shape[:-1], n / block_size)``: each block's absmax.
      kind: ``"int8"`` or ``"nf4"`` (static).
      block_size: numbers per scale along the last axis (static).
      stored_shape: the kernel's own shape, without leading (scan) axes (static).
      stored_dtype: the kernel's dtype, which dequantising gives back (static).
      view: reshapes and transposes applied after dequantising (static); how
        :meth:`~jaxlora.adapters.base.Target.as_matrix` sees a multi-axis kernel as a matrix
        without dequantising it early.

    Array-like reads dequantise: ``astype``, ``jnp.asarray`` (``__jax_array__``), ``np.asarray``
    and indexing. Dequantising stops gradients: the codes are integers and the scales frozen.

    >>> node = quantize(jnp.arange(8.0).reshape(2, 4), "int8", block_size=4)
    >>> node.shape, node.dtype, node.astype(jnp.float32).round(1).tolist()   # within c / 254 per block
    ((2, 4), dtype('float32'), [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]])
    """

    codes: Array
    scales: Array
    kind: str = struct.field(pytree_node=False)
    block_size: int = struct.field(pytree_node=False)
    stored_shape: tuple[int, ...] = struct.field(pytree_node=False)
    stored_dtype: Any = struct.field(pytree_node=False)
    view: tuple = struct.field(pytree_node=False, default=())

    @property
    def lead_shape(self) -> tuple[int, ...]:
        """Leading axes on every array (a stack of layers), before the kernel's own."""
        return tuple(self.codes.shape[: len(self.codes.shape) - len(self.stored_shape)])

    @property
    def shape(self) -> tuple[int, ...]:
        return self.lead_shape + _viewed_shape(self.stored_shape, self.view)

    @property
    def dtype(self):
        return self.stored_dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the codes and scales together (works on abstract arrays too)."""
        return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in (self.codes, self.scales))

    def dequantize(self) -> Array:
        """The kernel in ``stored_dtype`` (see :func:`dequantize`)."""
        return dequantize(self)

    def astype(self, dtype) -> Array:
        return self.dequantize().astype(dtype)

    def __jax_array__(self) -> Array:
        return self.dequantize()

    def __array__(self, dtype=None, copy=None):
        return np.asarray(jax.device_get(self.dequantize()), dtype=dtype)

    def __getitem__(self, index):
        return self.dequantize()[index]

    # Lazy views: Target.as_matrix reads a multi-axis kernel as (d_in, d_out) through these.
    def reshape(self, *shape) -> "QuantizedKernel":
        shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else tuple(shape)
        self._check_viewable("reshape")
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape a quantized kernel of shape {self.shape} to {shape}.")
        return self.replace(view=self.view + (("reshape", shape),))

    def transpose(self, *axes) -> "QuantizedKernel":
        axes = tuple(axes[0]) if len(axes) == 1 and not isinstance(axes[0], int) else tuple(axes)
        self._check_viewable("transpose")
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"axes {axes} are not a permutation of the {self.ndim} axes of {self.shape}.")
        return self.replace(view=self.view + (("transpose", axes),))

    def _check_viewable(self, what: str) -> None:
        if self.lead_shape:
            raise ValueError(
                f"cannot {what} a stack of quantized kernels (leading axes {self.lead_shape}): views apply "
                "to one layer's kernel; take a layer first, or dequantize the stack."
            )


def _viewed_shape(shape: tuple[int, ...], view: tuple) -> tuple[int, ...]:
    for op, arg in view:
        shape = tuple(arg) if op == "reshape" else tuple(shape[a] for a in arg)
    return shape


def is_quantized(x: Any) -> bool:
    """Whether ``x`` is a :class:`QuantizedKernel`.

    >>> is_quantized(quantize(jnp.ones((4, 8)), "nf4", block_size=8)), is_quantized(jnp.ones((4, 8)))
    (True, False)
    """
    return isinstance(x, QuantizedKernel)


# ---------------------------------------------------------------------------
# One array.


def _check_kind(kind: str, block_size: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"Unknown quantisation kind {kind!r}; the kinds are {', '.join(KINDS)} (QLoRA's is 'nf4').")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive whole number of numbers per scale, got {block_size!r}.")


def _not_a_kernel(shape, dtype) -> str | None:
    """Why an array cannot be quantized as a kernel, or None."""
    if len(shape) < 2:
        return f"it has {len(shape)} axis{'' if len(shape) == 1 else 'es'} (a kernel has two or more)"
    if not jnp.issubdtype(dtype, jnp.floating):
        return f"its dtype {np.dtype(dtype).name} is not floating point"
    return None


def _blocking_problem(shape, kind: str, block_size: int) -> str | None:
    n = shape[-1]
    if n % block_size:
        return f"block_size={block_size} does not divide its last axis ({n})"
    if kind == "nf4" and n % 2:
        return f"nf4 packs two codes per byte and its last axis ({n}) is odd"
    return None


def _midpoints() -> Array:
    levels = np.asarray(NF4_LEVELS, np.float32)
    return jnp.asarray((levels[1:] + levels[:-1]) / 2)


@functools.partial(jax.jit, static_argnames=("kind", "block_size"))
def _encode(w: Array, kind: str, block_size: int) -> tuple[Array, Array]:
    blocks = w.astype(jnp.float32).reshape(*w.shape[:-1], w.shape[-1] // block_size, block_size)
    absmax = jnp.max(jnp.abs(blocks), axis=-1)
    normed = blocks / jnp.where(absmax > 0, absmax, 1.0)[..., None]   # an all-zero block stays zero
    if kind == "int8":
        codes = jnp.clip(jnp.round(normed * INT8_MAX), -INT8_MAX, INT8_MAX).astype(jnp.int8).reshape(w.shape)
    else:
        # The nearest level is the number of midpoints below the value.
        nearest = jnp.searchsorted(_midpoints(), normed).astype(jnp.uint8).reshape(*w.shape[:-1], -1, 2)
        codes = nearest[..., 0] | (nearest[..., 1] << 4)
    return codes, absmax.astype(_SCALE_DTYPE)


def _quantize_array(w, kind: str, block_size: int, where: str = "the array") -> QuantizedKernel:
    problem = _not_a_kernel(np.shape(w), jnp.result_type(w)) or _blocking_problem(np.shape(w), kind, block_size)
    if problem:
        raise ValueError(f"Cannot quantize {where} of shape {tuple(np.shape(w))}: {problem}.")
    codes, scales = _encode(jnp.asarray(w), kind=kind, block_size=int(block_size))
    return QuantizedKernel(codes, scales, kind, int(block_size), tuple(np.shape(w)), np.dtype(jnp.result_type(w)))


def dequantize(tree: Any) -> Any:
    """The kernel a :class:`QuantizedKernel` stands for; on a tree, every node replaced by its kernel.

    The result has the node's ``stored_dtype`` (computed in float32, then cast) and its leading
    axes; gradients stop here. Anything that is not a node is returned as it is.

    >>> w = jax.random.normal(jax.random.key(0), (8, 16))
    >>> back = dequantize(quantize(w, "int8", block_size=8))
    >>> bool(jnp.max(jnp.abs(back - w)) <= jnp.max(jnp.abs(w)) / 254 + 1e-6)
    True
    >>> dequantize({"k": quantize(w, "nf4", block_size=8), "bias": jnp.ones(16)})["k"].shape
    (8, 16)
    """
    if not isinstance(tree, QuantizedKernel):
        return jax.tree.map(lambda x: dequantize(x) if isinstance(x, QuantizedKernel) else x, tree, is_leaf=is_quantized)
    q = tree
    if q.kind == "int8":
        values = q.codes.astype(jnp.float32) / INT8_MAX
    else:
        nibbles = jnp.stack([q.codes & 0xF, q.codes >> 4], axis=-1).reshape(*q.codes.shape[:-1], -1)
        values = jnp.take(jnp.asarray(NF4_LEVELS, jnp.float32), nibbles.astype(jnp.int32))
    lead = q.lead_shape
    blocks = values.reshape(*values.shape[:-1], -1, q.block_size) * q.scales.astype(jnp.float32)[..., None]
    kernel = blocks.reshape(lead + q.stored_shape).astype(q.stored_dtype)
    for op, arg in q.view:
        if op == "reshape":
            kernel = kernel.reshape(lead + tuple(arg))
        else:
            kernel = jnp.transpose(kernel, tuple(range(len(lead))) + tuple(len(lead) + a for a in arg))
    return jax.lax.stop_gradient(kernel)


# ---------------------------------------------------------------------------
# A params tree.


def quantize(frozen: Any, kind: str = "nf4", block_size: int = 64, *, skip: Sequence[str] = ()) -> Any:
    """Frozen params with every linear kernel as a :class:`QuantizedKernel` (or one array, quantized).

    Args:
      frozen: the model's plain ``params`` tree, or a single kernel (a floating array of two or
        more axes).
      kind: ``"int8"`` (symmetric absmax) or ``"nf4"`` (QLoRA's NormalFloat4); see the module
        docstring for both formats.
      block_size: numbers per absmax scale, along each kernel's last axis (QLoRA uses 64).
      skip: leaf patterns (``"classifier"``, ``"re:..."``; the rule of
        ``AdapterConfig.trainable``) of kernels to keep as they are, such as a head trained in full.

    In a tree, the leaves quantized are the ``kernel`` leaves of two or more axes (Dense,
    DenseGeneral, Einsum; the matrices jaxlora adapts); embeddings, norms and biases stay in
    their dtype. :func:`quantized_paths` lists them. Every kernel whose last axis ``block_size``
    does not divide is named in one error. Quantize before ``jaxlora.apply``: an adapter node in
    the tree is refused. Works under ``jax.eval_shape`` (abstract params in, abstract nodes out).

    >>> frozen = {"mlp": {"kernel": jnp.ones((4, 32)), "bias": jnp.zeros(32)}, "head": {"kernel": jnp.ones((32, 3))}}
    >>> q = quantize(frozen, "int8", block_size=32, skip=("head",))
    >>> type(q["mlp"]["kernel"]).__name__, type(q["head"]["kernel"]).__name__
    ('QuantizedKernel', 'ArrayImpl')
    >>> quantize(frozen, "int8", block_size=32)
    Traceback (most recent call last):
    ValueError: Cannot quantize with block_size=32: head/kernel (32, 3): block_size=32 does not divide its last axis (3). Choose a block_size that divides every kernel's last axis, or leave these kernels out with skip=(...).
    >>> quantize(frozen, "int4")
    Traceback (most recent call last):
    ValueError: Unknown quantisation kind 'int4'; the kinds are int8, nf4 (QLoRA's is 'nf4').
    """
    _check_kind(kind, block_size)
    if not isinstance(frozen, Mapping):
        if isinstance(frozen, (QuantizedKernel, AdaptedKernel)) or not hasattr(frozen, "shape"):
            raise ValueError(f"quantize takes a params tree or one kernel array, got {type(frozen).__name__}.")
        reason = _not_a_kernel(np.shape(frozen), jnp.result_type(frozen))
        if reason:
            raise ValueError(f"Cannot quantize an array of shape {tuple(np.shape(frozen))}: {reason}. "
                             "Only linear kernels are quantized; embeddings, norms and biases keep their dtype.")
        return _quantize_array(frozen, kind, block_size)
    flat = flatten(frozen)
    for path, leaf in flat.items():
        if isinstance(leaf, (QuantizedKernel, AdaptedKernel)):
            raise ValueError(
                f"{join(path)} is already a {type(leaf).__name__}: quantize the plain frozen params once, "
                "before jaxlora.apply."
            )
    chosen = [
        path for path, leaf in flat.items()
        if path[-1] == "kernel" and _not_a_kernel(np.shape(leaf), jnp.result_type(leaf)) is None
        and not any(matches_leaf(pattern, join(path)) for pattern in skip)
    ]
    if not chosen:
        raise ValueError(
            "quantize found no linear kernel to quantize (a 'kernel' leaf of two or more floating axes"
            + (f", outside skip={tuple(skip)}" if skip else "") + "). Pass the model's plain params collection."
        )
    problems = [
        f"{join(p)} {tuple(np.shape(flat[p]))}: {why}"
        for p in chosen if (why := _blocking_problem(np.shape(flat[p]), kind, block_size))
    ]
    if problems:
        listed = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ValueError(
            f"Cannot quantize with block_size={block_size}: {listed}. Choose a block_size that divides every "
            "kernel's last axis, or leave these kernels out with skip=(...)."
        )
    for path in chosen:
        flat[path] = _quantize_array(flat[path], kind, block_size, join(path))
    return unflatten(flat)


def quantized_paths(tree: Mapping) -> tuple[str, ...]:
    """The ``/``-joined paths of the quantized leaves of ``tree``, in order.

    >>> quantized_paths({"q": {"kernel": quantize(jnp.ones((2, 8)), "nf4", block_size=8)}, "n": {"scale": jnp.ones(2)}})
    ('q/kernel',)
    """
    return tuple(join(path) for path, leaf in flatten(tree).items() if isinstance(leaf, QuantizedKernel))
