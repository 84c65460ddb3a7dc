"""The contract every adapter variant fulfils.

An adapter variant is one module (in ``jaxlora/adapters/`` or anywhere else)
that defines

* a :class:`Variant` subclass, registered with :func:`register`, which knows how
  to create the variant's parameters for a set of :class:`Target` matrices and
  how to turn them, together with a frozen kernel, into an :class:`AdaptedKernel`;
* an :class:`AdaptedKernel` subclass: a pytree node that holds the frozen kernel
  ``K`` of shape ``(d_in, d_out)`` and whatever the variant needs to compute its
  low-rank update, without ever forming ``K + s * delta``;
* optionally, its options: a small frozen dataclass set as ``Variant.Options``.
  :class:`~jaxlora.adapters.config.AdapterConfig` carries an instance of it as
  ``config.options`` (a mapping given by the user is turned into one, unknown
  names are an error listing the known ones), and the training config grows a
  ``lora.<variant>`` block with its fields, so nothing outside the variant's
  file names them.

Everything else (target matching, the factored and merged execution modes,
merging, conversion to plain LoRA factors, parameter counting, serialisation)
is written once in :mod:`jaxlora.adapters.core` against this contract, so a new
variant is one new file plus its tests.

A kernel with several input or output axes (``DenseGeneral``, ``Einsum``) is a
matrix to every variant: :class:`Target` records which of its axes are inputs and
which outputs, and :meth:`Target.as_matrix` views it as ``(prod(in), prod(out))``
before a variant sees it, so variants only ever deal with 2-D kernels.

>>> from jaxlora.adapters.lora import LoRAKernel
>>> @dataclasses.dataclass(frozen=True)
... class HalfOptions:
...     half: str = "a"                      # which factor trains
>>> @register
... class Half(Variant):                     # LoRA training one factor, chosen by an option
...     name = "doc-half"
...     Options = HalfOptions
...     def init(self, rng, targets, config):
...         trainable, fixed = {}, {}
...         for path, t in targets.items():
...             a = kaiming_uniform(path_rng(rng, path), (t.d_in, t.rank), fan_in=t.d_in)
...             b = jnp.zeros((t.rank, t.d_out))
...             trained, kept = ({"a": a}, {"b": b}) if config.options.half == "a" else ({"b": b}, {"a": a})
...             trainable[path], fixed[path] = trained, kept
...         return trainable, fixed
...     def node(self, target, kernel, trainable, fixed, config):
...         p = {**trainable[target.path], **fixed[target.path]}
...         return LoRAKernel(kernel, p["a"], p["b"], scale=target.scale, dropout_rate=config.dropout)
>>> cfg = jaxlora.AdapterConfig("doc-half", rank=2, targets=("query",), options={"half": "b"})
>>> cfg.options
HalfOptions(half='b')
>>> adapter = jaxlora.init(jax.random.key(0), {"query": {"kernel": jnp.ones((4, 4))}}, cfg)
>>> sorted(adapter.trainable["lowrank"]["query"]), sorted(adapter.fixed["query"])
(['b'], ['a'])
>>> get_variant("doc-half").describe(cfg)
'doc-half (half=b)'

Parameter trees handed to and returned by a variant are *flat* dicts keyed by a
tuple path (``("encoder", "layer_0", "attention", "query")``) or, for variants
that share parameters across layers, by any tuple the variant chooses (CondLoRA
keys its shared maps by module type, ``("query",)``). The core turns them into
nested dicts for users, optimisers and checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array
Path = tuple[str, ...]
FlatTree = dict[Path, Any]


class AdaptedKernel:
    """A frozen kernel plus a low-rank update, kept apart.

    Subclasses are ``flax.struct.dataclass`` pytrees with at least the fields
    ``kernel`` (the frozen ``(d_in, d_out)`` matrix), ``scale`` and
    ``dropout_rate`` (both static), and implement :meth:`factors`.

    The project's :class:`jaxlora.nn.Dense` recognises these nodes and computes
    ``x @ kernel + scale * (dropout(x) @ a) @ b`` from :meth:`factors`, so a variant
    only has to say what its factors are.
    """

    kernel: Array
    scale: float
    dropout_rate: float

    def factors(self) -> tuple[Array, Array]:
        """The update as plain LoRA factors ``(a, b)``: ``delta == a @ b``."""
        raise NotImplementedError

    def delta(self) -> Array:
        """The dense ``(d_in, d_out)`` update, unscaled. Only for merging."""
        a, b = self.factors()
        return a @ b

    def merged(self) -> Array:
        """``K + s * delta`` in the kernel's dtype (accumulated in fp32)."""
        k = self.kernel
        full = k.astype(jnp.float32) + self.scale * self.delta().astype(jnp.float32)
        return full.astype(k.dtype)

    # A layer that does not know factored mode reads its kernel as an array: with
    # jnp.asarray (Linen's promote_dtype) or kernel[...] (NNX). Both land here, so
    # the user gets one message that says what to do instead of a TypeError deep in Flax.
    def __jax_array__(self):
        raise TypeError(outside_intercept_message(type(self).__name__))

    def __getitem__(self, index):
        raise TypeError(outside_intercept_message(type(self).__name__))

    # Array-like conveniences so code that inspects a kernel keeps working.
    @property
    def shape(self) -> tuple[int, ...]:
        return self.kernel.shape

    @property
    def dtype(self):
        return self.kernel.dtype

    @property
    def ndim(self) -> int:
        return self.kernel.ndim


@struct.dataclass
class MultiAxisKernel(AdaptedKernel):
    """A multi-axis kernel's node in a factored params tree: the kernel as stored, and the node.

    The variant's ``node`` works on the ``(d_in, d_out)`` matrix view; ``stored`` is the same
    frozen kernel in the layer's own layout (``(d, heads, head_dim)``), first among the leaves,
    so a layer that checks its param's shape (Linen's ``self.param``) sees what it expects and
    then, outside :func:`jaxlora.intercept`, reaches the message that says what to do.
    Everything else is the node's.
    """

    stored: Array
    node: AdaptedKernel

    @property
    def kernel(self) -> Array:
        return self.node.kernel

    @property
    def scale(self) -> float:
        return self.node.scale

    @property
    def dropout_rate(self) -> float:
        return self.node.dropout_rate

    def factors(self):
        return self.node.factors()


def outside_intercept_message(node_name: str) -> str:
    return (
        f"A factored adapter node ({node_name}) reached a layer that reads its kernel as a plain array. "
        "Stock Flax layers (Linen Dense/DenseGeneral/Einsum, NNX Linear/LinearGeneral/Einsum) run "
        "factored adapters only inside `with jaxlora.intercept():`; wrap the model call in it, use "
        "jaxlora.nn.Dense, or build the params with jaxlora.apply(..., mode=\"merged\")."
    )


@dataclasses.dataclass(frozen=True)
class Target:
    """One frozen matrix an adapter acts on.

    Attributes:
      path: path of the kernel's module in the parameter tree, without the
        trailing ``"kernel"`` (e.g. ``("encoder", "layer_0", "attention", "query")``).
      shape: ``(d_in, d_out)`` of the kernel.
      dtype: dtype of the frozen kernel.
      rank: rank for this matrix (after per-pattern overrides).
      alpha: alpha for this matrix (after per-pattern overrides).
      scale: ``alpha / rank`` or ``alpha / sqrt(rank)`` with rsLoRA.
      group: module type (the module's own name, e.g. ``"query"``); variants
        that share parameters across layers key them by it.
      kernel_shape: the kernel as stored (``(d, heads, head_dim)`` for an
        attention projection); ``shape`` for a 2-D kernel.
      in_dims, out_dims: which axes of the stored kernel are the layer's input
        and output axes, each in the kernel's order; ``shape`` is their products.

    >>> t = Target(("q",), (16, 16), jnp.float32, 4, 4.0, 1.0, "q", (16, 2, 8), (0,), (1, 2))
    >>> t.as_matrix(jnp.ones((16, 2, 8))).shape, t.from_matrix(jnp.ones((16, 16))).shape
    ((16, 16), (16, 2, 8))
    """

    path: Path
    shape: tuple[int, int]
    dtype: Any
    rank: int
    alpha: float
    scale: float
    group: str
    kernel_shape: tuple[int, ...] | None = None
    in_dims: tuple[int, ...] = (0,)
    out_dims: tuple[int, ...] = (1,)

    def __post_init__(self):
        if self.kernel_shape is None:
            object.__setattr__(self, "kernel_shape", tuple(self.shape))

    @property
    def d_in(self) -> int:
        return self.shape[0]

    @property
    def d_out(self) -> int:
        return self.shape[1]

    def as_matrix(self, kernel: Array) -> Array:
        """The stored kernel as the ``(d_in, d_out)`` matrix the variant adapts."""
        if kernel.ndim == 2 and self.in_dims == (0,):
            return kernel
        order = self.in_dims + self.out_dims
        if order != tuple(range(kernel.ndim)):
            kernel = kernel.transpose(order)  # the method: a quantized kernel records it as a lazy view
        return kernel.reshape(self.shape)

    def from_matrix(self, matrix: Array) -> Array:
        """Inverse of :meth:`as_matrix`: a ``(d_in, d_out)`` matrix in the stored layout."""
        if len(self.kernel_shape) == 2 and self.in_dims == (0,):
            return matrix
        order = self.in_dims + self.out_dims
        viewed = matrix.reshape(tuple(self.kernel_shape[d] for d in order))
        if order != tuple(range(len(order))):
            viewed = jnp.transpose(viewed, tuple(int(i) for i in np.argsort(order)))
        return viewed


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a variant that has none."""


class Variant:
    """Base class of adapter variants. Subclass, set ``name``, :func:`register`.

    Subclasses implement :meth:`init` and :meth:`node`; :meth:`check` may reject
    targets the variant cannot handle, with a message that says how to fix it.

    Attributes:
      name: the name configs use (``AdapterConfig("mtlora")``); it also names
        the variant's block of options in the training config, so make it a
        Python identifier when the variant has options.
      Options: a frozen dataclass of the variant's options, with a default for
        each field; ``__post_init__`` may reject bad values. ``config.options``
        is an instance of it.
      legacy_config_keys: ``{old AdapterConfig field: option name}`` for options
        that were once flat ``AdapterConfig`` fields, so files written then
        still load (:meth:`AdapterConfig.from_dict`).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    legacy_config_keys: ClassVar[Mapping[str, str]] = {}

    def options(self, value: Any = None) -> Any:
        """``value`` as this variant's ``Options``: ``None`` gives the defaults, a mapping its fields.

        >>> get_variant("mtlora").options({"structure": "ctcm"})
        MTLoRAOptions(structure='ctcm', init='kaiming')
        >>> get_variant("mtlora").options({"structur": "ctcm"})
        Traceback (most recent call last):
        ValueError: Unknown option 'structur' of adapter variant 'mtlora'; its options are structure (default 'shim'), init (default 'kaiming').
        """
        if value is None:
            return self.Options()
        if isinstance(value, self.Options):
            return value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            raise ValueError(
                f"Adapter variant {self.name!r} takes {self.Options.__name__} options, got "
                f"{type(value).__name__}: pass options=None (the defaults) or a mapping of its fields."
            )
        if not isinstance(value, Mapping):
            raise TypeError(f"options must be a mapping or {self.Options.__name__}, got {type(value).__name__}.")
        known = {f.name: f for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            listing = ", ".join(f"{n} (default {f.default!r})" for n, f in known.items()) or "none"
            label = "option" if len(unknown) == 1 else "options"
            names = ", ".join(repr(u) for u in unknown)
            raise ValueError(f"Unknown {label} {names} of adapter variant {self.name!r}; its options are {listing}.")
        return self.Options(**value)

    def describe(self, config) -> str:
        """A short label for tables and file headers: the name, then the options.

        >>> get_variant("mtlora").describe(jaxlora.AdapterConfig("mtlora", options={"structure": "ctcm"}))
        'mtlora (structure=ctcm, init=kaiming)'
        >>> get_variant("lora").describe(jaxlora.AdapterConfig("lora"))
        'lora'
        """
        values = dataclasses.asdict(config.options)
        if not values:
            return self.name
        return f"{self.name} (" + ", ".join(f"{k}={v}" for k, v in values.items()) + ")"

    def check(self, targets: Mapping[Path, Target], config) -> None:
        """Raise ``ValueError`` for targets this variant cannot adapt."""

    def init(
        self, rng: Array, targets: Mapping[Path, Target], config
    ) -> tuple[FlatTree, FlatTree]:
        """Returns ``(trainable, fixed)`` flat trees of fp32 arrays.

        ``fixed`` holds frozen parameters that belong to the adapter (B-only's
        random ``a``): saved with it, never trained.
        """
        raise NotImplementedError

    def node(
        self,
        target: Target,
        kernel: Array,
        trainable: FlatTree,
        fixed: FlatTree,
        config,
    ) -> AdaptedKernel:
        """The factored node for one target, reading its parameters from the trees."""
        raise NotImplementedError


_REGISTRY: dict[str, Variant] = {}


def register(variant_cls: type[Variant]) -> type[Variant]:
    """Class decorator: make a variant available by its ``name``."""
    if not variant_cls.name:
        raise ValueError(f"{variant_cls.__name__} must set a non-empty `name`.")
    _REGISTRY[variant_cls.name] = variant_cls()
    return variant_cls


def get_variant(name: str) -> Variant:
    """The registered variant called ``name``; unknown names list the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none registered)"
        raise ValueError(f"Unknown adapter variant {name!r}; known variants: {known}.") from None


def registered_variants() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


# ---------------------------------------------------------------------------
# Initialisers shared by several variants.


def kaiming_uniform(rng: Array, shape: tuple[int, ...], fan_in: int) -> Array:
    """PyTorch's ``kaiming_uniform_(a=sqrt(5))``: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    >>> a = kaiming_uniform(jax.random.key(0), (768, 8), fan_in=768)
    """
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(rng, shape, jnp.float32, -bound, bound)


def random_orthonormal(rng: Array, rows: int, cols: int) -> Array:
    """A Haar-random ``(rows, cols)`` matrix with orthonormal columns (``rows >= cols``).

    QR of a Gaussian with the signs of R's diagonal fixed, which makes the
    distribution exactly Haar.

    >>> q = random_orthonormal(jax.random.key(0), 16, 4)   # q.T @ q == I
    """
    if cols > rows:
        raise ValueError(f"cannot draw {cols} orthonormal columns in dimension {rows}")
    g = jax.random.normal(rng, (rows, cols), jnp.float32)
    q, r = jnp.linalg.qr(g)
    signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)
    return q * signs[None, :]


def path_rng(rng: Array, path: Path) -> Array:
    """A key for one target derived from its path, so a target's init does not
    depend on which other targets exist."""
    data = "/".join(str(k) for k in path).encode()  # NNX list members have integer keys
    # FNV-1a, 31 bits: stable across processes (unlike hash()).
    h = 2166136261
    for byte in data:
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return jax.random.fold_in(rng, h & 0x7FFFFFFF)
