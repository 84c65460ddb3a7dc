"""Factored adapters in unmodified Flax models: ``with jaxlora.intercept(): ...``.

``jaxlora.apply(..., mode="factored")`` puts an
:class:`~jaxlora.adapters.base.AdaptedKernel` where each adapted kernel was. A
stock Flax layer cannot use it (it reads its kernel as an array), so inside
:func:`intercept` the stock linear layers are run by jaxlora instead, whenever
the kernel they are about to read is such a node:

* Linen ``nn.Dense``, ``nn.DenseGeneral``, ``nn.Einsum`` through
  ``flax.linen.intercept_methods``, Linen's documented hook for running code in
  place of a module method;
* NNX ``nnx.Linear``, ``nnx.LinearGeneral``, ``nnx.Einsum``, whose ``__call__``
  reads ``self.kernel[...]``: NNX has no method hook, so their ``__call__`` is
  replaced for the duration of the context (and restored on exit).

Every one of these layers is the einsum of its input with its kernel, so each is
turned into one equation (``Dense`` is ``"...i,io->...o"``) and computed the
same way: the input is laid out as ``(tokens, prod(contracted axes))``, the
kernel is the node's ``(d_in, d_out)`` matrix, and the product is

    y = x @ K + s * (dropout(x) @ a) @ b  (+ bias)

through :func:`jaxlora.nn.dense.factored_product`: ``K + s * a @ b`` is never
formed and no gradient of ``K`` is built. Layers whose kernel is a plain array,
and subclasses that override ``__call__``, run exactly as without the context.
A quantized kernel (:func:`jaxlora.quantize`) is dequantized in the layer, under
an adapter or alone (a stock Linen layer needs the context for a quantized kernel
without adapter too: its shape check would read the packed codes; NNX layers read
``kernel[...]``, which dequantizes anywhere).

Low-rank dropout: stock layers have no ``deterministic`` flag, so the context
carries it: ``intercept(deterministic=False)`` drops the low-rank input of nodes
with ``dropout_rate > 0``, drawing from Linen's ``"dropout"`` RNG stream, or, for
NNX, from the ``dropout_rng`` key given to the context.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlora.adapters.base import AdaptedKernel
from jaxlora.adapters.targets import einsum_layout
from jaxlora.nn.dense import dropout, factored_product
from jaxlora.nn.quantize import QuantizedKernel

Array = jax.Array
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclasses.dataclass
class _Context:
    deterministic: bool
    dropout_rng: Array | None
    calls: int = 0  # NNX dropout keys are fold_in(dropout_rng, call number)


_ACTIVE: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("jaxlora_intercept", default=None)


# ---------------------------------------------------------------------------
# Each stock layer as one einsum equation.


def dense_equation(ndim: int) -> str:
    """``Dense``/``nnx.Linear`` as an einsum over the last axis of an ``ndim``-D input.

    >>> dense_equation(3)
    'abc,cd->abd'
    """
    x = _LETTERS[:ndim]
    out = _LETTERS[ndim]
    return f"{x},{x[-1]}{out}->{x[:-1]}{out}"


def general_equation(ndim: int, axis, n_features: int) -> str:
    """``DenseGeneral``/``nnx.LinearGeneral`` (no batch axes) as an einsum.

    The kernel holds the contracted input axes in ``axis`` order, then the
    feature axes; the output keeps the other input axes in order, then features.

    >>> general_equation(3, (-1,), 2), general_equation(4, (-2, -1), 1)
    ('abc,cde->abde', 'abcd,cde->abe')
    """
    axis = tuple(a % ndim for a in ((axis,) if isinstance(axis, int) else axis))
    x = _LETTERS[:ndim]
    features = _LETTERS[ndim:ndim + n_features]
    kept = "".join(c for i, c in enumerate(x) if i not in axis)
    return f"{x},{''.join(x[a] for a in axis)}{features}->{kept}{features}"


def _expand_ellipsis(equation: str, ndim: int) -> str:
    eq = equation.replace(" ", "")
    if "..." not in eq:
        return eq
    operands, out = eq.split("->")
    lhs, rhs = operands.split(",")
    used = set(eq)
    fresh = "".join(c for c in _LETTERS if c not in used)[: ndim - (len(lhs) - 3)]
    return f"{lhs.replace('...', fresh)},{rhs}->{out.replace('...', fresh)}"


def factored_einsum(
    equation: str, x: Array, node: AdaptedKernel, kernel_shape, bias: Array | None, dtype: Any,
    dropout_rng: Array | None = None, layer: str = "layer",
) -> Array:
    """``einsum(equation, x, K + s*delta) + bias`` computed factored from ``node``.

    ``kernel_shape`` is the layer's kernel as stored; ``node.kernel`` is its
    ``(d_in, d_out)`` matrix view (input axes, then output axes, each in the
    kernel's order), which :func:`jaxlora.apply` puts there. ``dropout_rng``
    given: the low-rank input is dropped at ``node.dropout_rate``.

    >>> from jaxlora.adapters.lora import LoRAKernel
    >>> node = LoRAKernel(jnp.ones((4, 6)), jnp.zeros((4, 1)), jnp.zeros((1, 6)))
    >>> factored_einsum("btd,dnh->btnh", jnp.ones((2, 3, 4)), node, (4, 2, 3), None, jnp.float32).shape
    (2, 3, 2, 3)
    """
    eq = _expand_ellipsis(equation, x.ndim)
    operands, out = eq.split("->")
    lhs, rhs = operands.split(",")
    in_dims, out_dims = einsum_layout(eq, len(kernel_shape))
    contracted = "".join(rhs[d] for d in in_dims)
    produced = "".join(rhs[d] for d in out_dims)
    free = "".join(c for c in lhs if c not in rhs)
    if len(lhs) != x.ndim or any(c not in out for c in free):
        raise ValueError(f"{layer}: einsum {equation!r} on an input of shape {x.shape} is not a linear map jaxlora can factor.")
    matrix = (math.prod(kernel_shape[d] for d in in_dims), math.prod(kernel_shape[d] for d in out_dims))
    if tuple(node.kernel.shape) != matrix:
        raise ValueError(
            f"{layer}: the adapter node holds a {tuple(node.kernel.shape)} matrix, but this layer reads its "
            f"kernel {tuple(kernel_shape)} as {matrix} ({equation!r}). The adapter was made with another "
            "kernel layout: set AdapterConfig.kernel_axes for this module."
        )
    sizes = dict(zip(lhs, x.shape))
    perm = [lhs.index(c) for c in free + contracted]
    xt = x.astype(dtype)
    if perm != list(range(x.ndim)):
        xt = jnp.transpose(xt, perm)
    # Work on (tokens, features): see jaxlora.nn.Dense for why this is the fast layout.
    xt = xt.reshape(-1, matrix[0])
    h = None
    if dropout_rng is not None and node.dropout_rate > 0.0:
        h = dropout(xt, node.dropout_rate, dropout_rng)
    y = factored_product(xt, node.kernel.astype(dtype), node, h)
    y = y.reshape(tuple(sizes[c] for c in free) + tuple(kernel_shape[d] for d in out_dims))
    order = free + produced
    perm_out = [order.index(c) for c in out]
    if perm_out != list(range(len(out))):
        y = jnp.transpose(y, perm_out)
    return _add_bias(y, bias, rhs, out, dtype)


def _add_bias(y: Array, bias: Array | None, rhs: str, out: str, dtype: Any) -> Array:
    if bias is None:
        return y
    bias_shape = [y.shape[i] if c in rhs else 1 for i, c in enumerate(out)]
    return y + jnp.reshape(bias.astype(dtype), bias_shape)


def dequantized_einsum(equation: str, x: Array, kernel: QuantizedKernel, bias: Array | None, dtype: Any) -> Array:
    """``einsum(equation, x, K) + bias`` for a quantized kernel with no adapter: ``K`` dequantized here.

    >>> from jaxlora.nn.quantize import quantize
    >>> dequantized_einsum("bd,dn->bn", jnp.ones((2, 4)), quantize(jnp.ones((4, 8)), "nf4", 8), None, jnp.float32).tolist()[0]
    [4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    """
    eq = _expand_ellipsis(equation, x.ndim)
    operands, out = eq.split("->")
    rhs = operands.split(",")[1]
    return _add_bias(jnp.einsum(eq, x.astype(dtype), kernel.astype(dtype)), bias, rhs, out, dtype)


def _dtype(layer_dtype, *arrays) -> Any:
    return layer_dtype or jnp.result_type(*[a for a in arrays if a is not None])


def _batchless(layer: str, batch) -> None:
    if batch:
        raise ValueError(
            f"{layer}: a DenseGeneral/LinearGeneral with batch axes {tuple(batch)} has one matrix per batch "
            "index, not one matrix; jaxlora cannot adapt it. Exclude it from the targets."
        )


# ---------------------------------------------------------------------------
# Linen: nn.intercept_methods.

_LINEN_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Einsum)


def _linen_layout(module: nn.Module, x: Array, einsum_str: str | None):
    """``(name, equation, kernel_shape, bias)`` of a stock Linen layer about to run on ``x``."""
    name = "/".join(module.path) or type(module).__name__
    bias = module.get_variable("params", "bias") if getattr(module, "use_bias", False) else None
    if isinstance(module, nn.Dense):
        equation, kernel_shape = dense_equation(x.ndim), (x.shape[-1], module.features)
    elif isinstance(module, nn.DenseGeneral):
        _batchless(name, module.batch_dims)
        features = (module.features,) if isinstance(module.features, int) else tuple(module.features)
        axis = (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
        equation = general_equation(x.ndim, axis, len(features))
        kernel_shape = tuple(x.shape[a] for a in axis) + features
    else:
        equation = einsum_str if einsum_str is not None else module.einsum_str
        kernel_shape = tuple(module.shape)
    return name, equation, kernel_shape, bias


def _linen_call(module: nn.Module, node: AdaptedKernel, x: Array, einsum_str: str | None, ctx: _Context) -> Array:
    name, equation, kernel_shape, bias = _linen_layout(module, x, einsum_str)
    rng = None
    if not ctx.deterministic and node.dropout_rate > 0.0:
        rng = module.make_rng("dropout")
    return factored_einsum(equation, x, node, kernel_shape, bias, _dtype(module.dtype, x, node.kernel, bias), rng, name)


def _linen_interceptor(next_fun, args, kwargs, context):
    module = context.module
    ctx = _ACTIVE.get()
    if (
        ctx is None
        or context.method_name != "__call__"
        or not isinstance(module, _LINEN_LAYERS)
        or not _stock_call(type(module), _LINEN_LAYERS)
        or not module.has_variable("params", "kernel")
    ):
        return next_fun(*args, **kwargs)
    node = module.get_variable("params", "kernel")
    if not isinstance(node, (AdaptedKernel, QuantizedKernel)):
        return next_fun(*args, **kwargs)
    x = args[0] if args else kwargs["inputs"]
    einsum_str = args[1] if len(args) > 1 else kwargs.get("einsum_str")
    if isinstance(node, QuantizedKernel):
        # Linen's param shape check would read the packed codes: run the layer's einsum here instead.
        _, equation, _, bias = _linen_layout(module, x, einsum_str)
        return dequantized_einsum(equation, x, node, bias, _dtype(module.dtype, x, node, bias))
    return _linen_call(module, node, x, einsum_str, ctx)


def _stock_call(cls, stock_classes) -> bool:
    """Whether ``cls`` runs one of ``stock_classes``' own ``__call__`` (a subclass may override it)."""
    return any(cls.__call__ is base.__call__ for base in stock_classes if issubclass(cls, base))


# ---------------------------------------------------------------------------
# NNX: the stock layers' __call__, swapped for the context's duration.

_NNX_LAYERS = (nnx.Linear, nnx.LinearGeneral, nnx.Einsum)
_NNX_ORIGINAL = {cls: cls.__call__ for cls in _NNX_LAYERS}


def _nnx_call(module, node: AdaptedKernel, x: Array, einsum_str: str | None, ctx: _Context) -> Array:
    name = type(module).__name__
    bias = module.bias.get_value() if module.bias is not None else None
    if isinstance(module, nnx.Linear):
        equation, kernel_shape = dense_equation(x.ndim), (module.in_features, module.out_features)
    elif isinstance(module, nnx.LinearGeneral):
        _batchless(name, module.batch_axis)
        equation = general_equation(x.ndim, module.axis, len(module.out_features))
        kernel_shape = tuple(module.in_features) + tuple(module.out_features)
    else:
        equation = einsum_str if einsum_str is not None else module.einsum_str
        kernel_shape = tuple(module.kernel_shape)
    rng = None
    if not ctx.deterministic and node.dropout_rate > 0.0:
        if ctx.dropout_rng is None:
            raise ValueError(
                "jaxlora.intercept(deterministic=False) on an NNX model needs dropout_rng=<key> to draw the "
                "low-rank dropout masks."
            )
        rng = jax.random.fold_in(ctx.dropout_rng, ctx.calls)
        ctx.calls += 1
    return factored_einsum(equation, x, node, kernel_shape, bias, _dtype(module.dtype, x, node.kernel, bias), rng, name)


def _nnx_wrapper(cls):
    original = _NNX_ORIGINAL[cls]

    def __call__(self, inputs, *args, **kwargs):
        node = self.kernel.get_value()
        ctx = _ACTIVE.get()
        if ctx is None or not isinstance(node, AdaptedKernel):
            return original(self, inputs, *args, **kwargs)
        einsum_str = args[0] if args and cls is nnx.Einsum else kwargs.get("einsum_str")
        return _nnx_call(self, node, inputs, einsum_str, ctx)

    __call__.__doc__ = original.__doc__
    return __call__


_NNX_WRAPPED = {cls: _nnx_wrapper(cls) for cls in _NNX_LAYERS}
_PATCH_DEPTH = [0]


@contextlib.contextmanager
def _nnx_patched() -> Iterator[None]:
    if _PATCH_DEPTH[0] == 0:
        for cls, wrapped in _NNX_WRAPPED.items():
            cls.__call__ = wrapped
    _PATCH_DEPTH[0] += 1
    try:
        yield
    finally:
        _PATCH_DEPTH[0] -= 1
        if _PATCH_DEPTH[0] == 0:
            for cls, original in _NNX_ORIGINAL.items():
                cls.__call__ = original


# ---------------------------------------------------------------------------


@contextlib.contextmanager
def intercept(deterministic: bool = True, dropout_rng: Array | None = None) -> Iterator[None]:
    """Run stock Flax linear layers factored when their kernel is an adapter node.

    Args:
      deterministic: ``False`` applies the adapter's low-rank dropout (training).
      dropout_rng: NNX only: the key low-rank dropout masks are drawn from
        (Linen layers draw from the ``"dropout"`` RNG stream of ``apply``).

    Use it around the model call, inside the function you differentiate or jit
    (tracing happens there). Pass ``frozen`` to the jitted function as an
    argument: closed over, it would be folded into the program as constants.

    >>> import flax.linen as nn, jaxlora
    >>> model = nn.Dense(8)
    >>> x = jnp.ones((2, 16))
    >>> frozen = model.init(jax.random.key(0), x)["params"]
    >>> cfg = jaxlora.AdapterConfig("lora", rank=4, targets="all-linear", exclude=())
    >>> adapter = jaxlora.init(jax.random.key(1), {"dense": frozen}, cfg)
    >>> @jax.jit
    ... def forward(frozen, trainable):
    ...     params = jaxlora.apply({"dense": frozen}, adapter._replace(trainable=trainable), cfg)
    ...     with jaxlora.intercept():
    ...         return model.apply({"params": params["dense"]}, x)
    >>> bool(jnp.allclose(forward(frozen, adapter.trainable), model.apply({"params": frozen}, x)))
    True
    """
    token = _ACTIVE.set(_Context(deterministic=deterministic, dropout_rng=dropout_rng))
    try:
        with nn.intercept_methods(_linen_interceptor), _nnx_patched():
            yield
    finally:
        _ACTIVE.reset(token)


def kernel_axes(fn, *args, **kwargs) -> dict[str, Any]:
    """``{module path: spec}`` of every multi-axis Linen layer ``fn`` calls, for ``AdapterConfig(kernel_axes=...)``.

    ``fn(*args, **kwargs)`` is traced abstractly (nothing is computed); pass the
    model's ``init`` so the paths are those of its params. ``DenseGeneral`` gives
    its number of input axes, ``Einsum`` its equation. Needed only for bias-free
    multi-axis layers: with a bias, jaxlora reads the layout from its shape.

    >>> import flax.linen as nn
    >>> layer = nn.DenseGeneral(16, axis=(-2, -1), use_bias=False)
    >>> kernel_axes(layer.init, jax.random.key(0), jnp.ones((1, 2, 8)))
    {'': 2}
    """
    specs: dict[str, Any] = {}

    def record(next_fun, call_args, call_kwargs, context):
        module = context.method_name == "__call__" and context.module
        if isinstance(module, nn.DenseGeneral):
            axis = (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
            specs["/".join(module.path)] = len(axis)
        elif isinstance(module, nn.Einsum):
            equation = call_args[1] if len(call_args) > 1 else call_kwargs.get("einsum_str") or module.einsum_str
            specs["/".join(module.path)] = equation.replace(" ", "")
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: fn(*args, **kwargs))
    return specs
