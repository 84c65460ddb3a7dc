"""Which matrices an adapter acts on, and which leaves train in full.

Parameter trees are walked as flat ``{path_tuple: leaf}`` dicts. A *module path*
is the path of a ``kernel`` leaf without its last name, written ``/``-joined in
patterns and messages (``bert/encoder/layer_0/attention/query``).

Two matching rules, both documented on :class:`~jaxlora.adapters.config.AdapterConfig`:

* adapter targets match a module path by *suffix* (PEFT's rule): ``"query"``
  matches ``.../attention/query`` but ``"attention"`` does not;
* fully-trainable and excluded patterns match by a contiguous run of names:
  ``"classifier"`` matches ``classifier/kernel`` and ``classifier/out_proj/bias``,
  so excluding a head excludes every layer inside it.

``"re:<regex>"`` is a regular-expression search in either case. Plain patterns
may also be written with dots, as PEFT writes module names (``"self_attn.q_proj"``,
``"layers.0.mlp"``); path keys may be integers (an NNX ``nnx.List``), written as
their decimal form.

A *linear module* is any module with a ``kernel`` leaf that can be read as a
matrix: a 2-D kernel (``Dense``, ``nnx.Linear``) as it is; a kernel with more
axes (``DenseGeneral``, ``nnx.LinearGeneral``, ``Einsum``) as
``(prod(input axes), prod(output axes))``. The params tree alone does not say
which axes are which, so the layout is read, in this order, from

1. ``AdapterConfig.kernel_axes``: the number of leading input axes, or the
   layer's einsum equation (what the equation contracts is input, what it keeps
   is output);
2. the module's ``bias``: Flax's multi-axis layers give it the shape of the
   output axes, so a kernel ending in the bias's shape has the remaining leading
   axes as inputs (every stock Flax layer with ``use_bias=True``);

and a multi-axis kernel that neither settles is an error naming the module and
its shape.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from jaxlora.adapters.base import AdaptedKernel, Path, Target
from jaxlora.adapters.config import ALL_LINEAR, AdapterConfig
from jaxlora.util import listing, trees
from jaxlora.util.trees import unflatten  # noqa: F401  (targets.unflatten is imported by core, interop)

_MAX_LISTED = 60


def flatten(tree: Mapping[str, Any]) -> dict[Path, Any]:
    """``{path_tuple: leaf}`` of a nested dict of params (boxes and FrozenDicts allowed).

    Adapter nodes stay whole: they are leaves here, not dicts.
    """
    return trees.flatten(nn.unbox(tree)) if tree else {}


def join(path: Path) -> str:
    """``/``-joined path; integer keys (NNX lists) are written in decimal.

    >>> join(("layers", 0, "attn", "query"))
    'layers/0/attn/query'
    """
    return "/".join(str(k) for k in path)


def _plain(pattern: str) -> str:
    # PEFT names modules with dots ("self_attn.q_proj"); jaxlora paths use "/".
    return pattern.replace(".", "/")


def matches_module(pattern: str, module_path: str) -> bool:
    """Suffix match (or regex search with ``re:``) of a ``/``-joined module path.

    >>> matches_module("self_attn.q_proj", "layers/0/self_attn/q_proj")
    True
    """
    if pattern.startswith("re:"):
        return re.search(pattern[3:], module_path) is not None
    pattern = _plain(pattern)
    return module_path == pattern or module_path.endswith("/" + pattern)


def matches_leaf(pattern: str, leaf_path: str) -> bool:
    """Contiguous-run match (or regex search with ``re:``) of a ``/``-joined leaf path.

    >>> matches_leaf("classifier", "classifier/out_proj/bias")
    True
    """
    if pattern.startswith("re:"):
        return re.search(pattern[3:], leaf_path) is not None
    return f"/{_plain(pattern)}/" in f"/{leaf_path}/"


def _listing(paths) -> str:
    return "\n  " + listing(paths, limit=_MAX_LISTED, sep="\n  ")


def linear_modules(flat: Mapping[Path, Any]) -> dict[Path, Any]:
    """Module path -> kernel for every ``kernel`` leaf of two or more axes.

    >>> sorted(linear_modules({("mlp", "kernel"): np.ones((4, 8)), ("mlp", "bias"): np.ones(8)}))
    [('mlp',)]
    """
    return {p[:-1]: leaf for p, leaf in flat.items() if p and p[-1] == "kernel" and np.ndim(leaf) >= 2}


def einsum_layout(equation: str, kernel_ndim: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(in_dims, out_dims)`` of an einsum layer's kernel (its second operand).

    Kernel axes the equation contracts with the input are input axes; axes that
    survive into the output are output axes. An axis shared by input, kernel and
    output (a per-head batch axis) means the kernel is a stack of matrices, not
    one matrix, and is an error.

    >>> einsum_layout("BTD,DNH->BTNH"), einsum_layout("BTNH,NHD->BTD")
    (((0,), (1, 2)), ((0, 1), (2,)))
    """
    lhs, rhs, out = _split_equation(equation)
    if kernel_ndim is not None and len(rhs) != kernel_ndim:
        raise ValueError(f"einsum {equation!r} gives the kernel {len(rhs)} axes, but it has {kernel_ndim}.")
    in_dims, out_dims = [], []
    for i, c in enumerate(rhs):
        if c in lhs and c in out:
            raise ValueError(
                f"einsum {equation!r}: kernel axis {c!r} is also an input and output axis (a batch axis), "
                "so the kernel is a stack of matrices, not one matrix; adapters need one matrix."
            )
        if c in lhs:
            in_dims.append(i)
        elif c in out:
            out_dims.append(i)
        else:
            raise ValueError(f"einsum {equation!r}: kernel axis {c!r} is summed away; it is not a linear layer.")
    if not in_dims or not out_dims:
        raise ValueError(f"einsum {equation!r} has no input or no output axis on its kernel.")
    return tuple(in_dims), tuple(out_dims)


def _split_equation(equation: str) -> tuple[str, str, str]:
    eq = equation.replace(" ", "")
    if "->" not in eq or eq.count(",") != 1 or "." in eq.split("->")[0].split(",")[1]:
        raise ValueError(
            f"einsum equation {equation!r} must be explicit ('lhs,kernel->out'), with two operands and "
            "no ellipsis on the kernel."
        )
    operands, out = eq.split("->")
    lhs, rhs = operands.split(",")
    return lhs, rhs, out


def kernel_layout(name: str, kernel_shape, bias_shape, spec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(in_dims, out_dims)`` of one module's kernel (see the module docstring for the rules).

    >>> kernel_layout("attn/out", (4, 8, 32), (32,), None)
    ((0, 1), (2,))
    """
    ndim = len(kernel_shape)
    if spec is not None:
        try:
            if isinstance(spec, str):
                return einsum_layout(spec, ndim)
            n_in = int(spec)
            if not 0 < n_in < ndim:
                raise ValueError(f"{n_in} leading input axes leave no input or no output axis")
            return tuple(range(n_in)), tuple(range(n_in, ndim))
        except ValueError as e:
            raise ValueError(f"kernel_axes for module {name} (kernel shape {tuple(kernel_shape)}): {e}") from None
    if ndim == 2:
        return (0,), (1,)
    if bias_shape is not None and 0 < len(bias_shape) < ndim and tuple(kernel_shape[-len(bias_shape):]) == tuple(bias_shape):
        n_in = ndim - len(bias_shape)
        return tuple(range(n_in)), tuple(range(n_in, ndim))
    raise ValueError(
        f"Module {name} has a kernel of shape {tuple(kernel_shape)}, which cannot be read as a matrix: "
        f"nothing says which of its axes are inputs and which outputs"
        + ("" if bias_shape is None else f" (its bias {tuple(bias_shape)} is not the kernel's trailing axes)")
        + f". Tell jaxlora with AdapterConfig(kernel_axes={{{name!r}: <number of leading input axes>}}) or "
        f"the layer's einsum equation, e.g. {{{name!r}: 'BTD,DNH->BTNH'}}; jaxlora.nnx.kernel_axes(model) "
        f"(NNX) or jaxlora.kernel_axes(model.init, ...) (Linen) read them all from the model. If its first "
        f"axis stacks scanned layers, name the stack instead: AdapterConfig(layer_stacks=('<path of the "
        f"scanned module>',)) (jaxlora.models.layer_stacks(module) for a jaxlora model)."
    )


def _first_override(pairs, module_path: str, default):
    for pattern, value in pairs:
        if matches_module(pattern, module_path):
            return value
    return default


def find_targets(frozen: Mapping[str, Any] | Mapping[Path, Any], config: AdapterConfig) -> dict[Path, Target]:
    """The matrices ``config`` adapts in ``frozen``, with their rank, alpha and scale.

    Raises ``ValueError`` when a pattern matches nothing (listing the modules that
    exist) or a rank exceeds ``min(d_in, d_out)``.

    >>> params = {"attn": {"query": {"kernel": np.ones((16, 2, 8)), "bias": np.ones((2, 8))},
    ...                    "out": {"kernel": np.ones((2, 8, 16)), "bias": np.ones(16)}}}
    >>> [(t.shape, t.in_dims) for t in find_targets(params, AdapterConfig(targets="all-linear")).values()]
    [((16, 16), (0, 1)), ((16, 16), (0,))]
    """
    flat = frozen if _is_flat(frozen) else flatten(frozen)
    modules = linear_modules(flat)
    if not modules:
        raise ValueError(
            "The parameter tree has no 'kernel' leaves to adapt. Pass the model's plain 'params' "
            "collection (not {'params': ...}) of a model built from Dense/DenseGeneral/Einsum layers "
            "(or NNX Linear/LinearGeneral/Einsum)."
        )
    names = {join(p): p for p in modules}
    # An excluded name covers everything inside it ("classifier" excludes RoBERTa's
    # classifier/dense), so exclusion uses the contiguous-run rule, not the suffix rule.
    excluded = {n for n in names if any(matches_leaf(x, n) for x in config.exclude)}

    if config.targets == ALL_LINEAR:
        chosen = [n for n in names if n not in excluded]
    else:
        chosen = []
        for pattern in config.targets:
            hits = [n for n in names if matches_module(pattern, n) and n not in excluded]
            if not hits:
                raise ValueError(
                    f"Adapter target pattern {pattern!r} matches no linear module. Use a name the "
                    f"module paths end with, a 're:<regex>', or 'all-linear'. Linear modules:{_listing(names)}"
                )
            chosen.extend(hits)

    targets = {}
    for name in sorted(set(chosen)):
        path = names[name]
        kernel = modules[path]
        if isinstance(kernel, AdaptedKernel):
            raise ValueError(
                f"The matrix {name} already carries an adapter ({type(kernel).__name__}): two adapters on "
                "the same matrix are refused. Adapt the plain frozen params, or fold the first adapter in "
                "with jaxlora.merge(...) before adding a second."
            )
        bias = flat.get(path + ("bias",))
        in_dims, out_dims = kernel_layout(
            name, np.shape(kernel), None if bias is None else np.shape(bias),
            _first_override(config.kernel_axes, name, None),
        )
        kernel_shape = tuple(np.shape(kernel))
        d_in = int(np.prod([kernel_shape[d] for d in in_dims]))
        d_out = int(np.prod([kernel_shape[d] for d in out_dims]))
        rank = int(_first_override(config.rank_pattern, name, config.rank))
        alpha = float(_first_override(config.alpha_pattern, name, config.alpha))
        if rank > min(d_in, d_out):
            raise ValueError(
                f"rank {rank} is larger than min(d_in, d_out) = {min(d_in, d_out)} for module {name} "
                f"of shape {(d_in, d_out)}: a low-rank update cannot have that rank. Lower `rank` "
                f"(or add a rank_pattern entry for this module)."
            )
        targets[path] = Target(
            path=path,
            shape=(d_in, d_out),
            dtype=jax.numpy.result_type(kernel),
            rank=rank,
            alpha=alpha,
            scale=config.scale_for(rank, alpha),
            group=str(path[-1]) if path else "",  # a bare layer (its own params at the root) has no name
            kernel_shape=kernel_shape,
            in_dims=in_dims,
            out_dims=out_dims,
        )
    if not targets:
        raise ValueError(f"'all-linear' found no linear module outside exclude={config.exclude}.")
    return targets


def find_trainable_leaves(
    frozen: Mapping[str, Any] | Mapping[Path, Any], config: AdapterConfig, targets: Mapping[Path, Target]
) -> list[Path]:
    """Leaf paths trained in full (``config.trainable``); a pattern matching nothing is an error.

    >>> params = {"mlp": {"kernel": np.ones((4, 4))}, "head": {"kernel": np.ones((4, 2)), "bias": np.ones(2)}}
    >>> cfg = AdapterConfig(rank=2, targets=("mlp",), trainable=("head",))
    >>> find_trainable_leaves(params, cfg, find_targets(params, cfg))
    [('head', 'bias'), ('head', 'kernel')]
    """
    flat = frozen if _is_flat(frozen) else flatten(frozen)
    names = {join(p): p for p in flat}
    target_kernels = {join(p + ("kernel",)) for p in targets}
    chosen = []
    for pattern in config.trainable:
        hits = [n for n in names if matches_leaf(pattern, n)]
        if not hits:
            raise ValueError(
                f"Trainable pattern {pattern!r} matches no parameter. Parameters:{_listing(names)}"
            )
        clash = sorted(set(hits) & target_kernels)
        if clash:
            raise ValueError(
                f"Trainable pattern {pattern!r} also matches adapted kernels {clash[:5]}: a matrix is "
                f"either adapted or trained in full. Narrow the pattern or the targets."
            )
        chosen.extend(hits)
    return [names[n] for n in sorted(set(chosen))]


def _is_flat(tree: Mapping) -> bool:
    return bool(tree) and all(isinstance(k, tuple) for k in tree)
