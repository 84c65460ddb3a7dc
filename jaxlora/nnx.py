"""Flax NNX models as jaxlora parameter trees: ``split``, ``merge``, ``kernel_axes``.

jaxlora works on plain nested dicts of parameters. An NNX model keeps them in
its objects, so

    graphdef, frozen = jaxlora.nnx.split(model)       # frozen: {"attn": {"query": {"kernel": ...}}}
    adapter = jaxlora.init(key, frozen, config)
    ...
    model = jaxlora.nnx.merge(graphdef, jaxlora.apply(frozen, adapter, config))
    with jaxlora.intercept():
        y = model(x)                                  # stock nnx layers run factored

``frozen`` has the model's ``nnx.Param`` values only, keyed as NNX keys them
(members of an ``nnx.List`` under integer keys). Every other state (RNG
counters, batch statistics) stays in the :class:`GraphDef`, so ``merge`` gives
back the same model with new parameters. Both functions are pure, so ``merge``
belongs inside the jitted or differentiated function, and ``frozen`` is passed
to that function as an argument.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from flax import nnx as flax_nnx

from jaxlora.adapters.targets import join


class GraphDef(NamedTuple):
    """An NNX model's structure and its non-parameter state: what ``merge`` needs besides params."""

    graphdef: Any
    rest: Any


def split(model: flax_nnx.Module) -> tuple[GraphDef, dict]:
    """``(graphdef, params)``: the model's structure and its parameters as a plain nested dict.

    >>> from flax import nnx
    >>> graphdef, frozen = split(nnx.Linear(4, 2, rngs=nnx.Rngs(0)))
    >>> sorted(frozen), frozen["kernel"].shape
    (['bias', 'kernel'], (4, 2))
    """
    graphdef, params, rest = flax_nnx.split(model, flax_nnx.Param, ...)
    return GraphDef(graphdef, rest), flax_nnx.to_pure_dict(params)


def merge(graphdef: GraphDef, params: dict) -> flax_nnx.Module:
    """A model with ``params`` (plain arrays or jaxlora's adapter nodes) in its ``nnx.Param`` slots.

    >>> from flax import nnx
    >>> graphdef, frozen = split(nnx.Linear(4, 2, rngs=nnx.Rngs(0)))
    >>> merge(graphdef, frozen)(jax.numpy.ones((1, 4))).shape
    (1, 2)
    """
    if not isinstance(graphdef, GraphDef):
        raise TypeError("jaxlora.nnx.merge takes the graphdef returned by jaxlora.nnx.split(model).")
    return flax_nnx.merge(graphdef.graphdef, params, graphdef.rest)


def kernel_axes(model: flax_nnx.Module) -> dict[str, Any]:
    """``{module path: spec}`` for every multi-axis linear layer, for ``AdapterConfig(kernel_axes=...)``.

    ``LinearGeneral`` gives its number of input axes, ``Einsum`` its equation.
    Needed only when such layers have no bias (with one, jaxlora reads the
    layout from the bias's shape).

    >>> from flax import nnx
    >>> kernel_axes(nnx.LinearGeneral((2, 8), 16, axis=(-2, -1), use_bias=False, rngs=nnx.Rngs(0)))
    {'': 2}
    """
    specs = {}
    for path, node in flax_nnx.iter_graph(model):
        if isinstance(node, flax_nnx.LinearGeneral):
            specs[join(path)] = len(node.in_features)
        elif isinstance(node, flax_nnx.Einsum) and node.einsum_str is not None:
            specs[join(path)] = node.einsum_str.replace(" ", "")
    return specs
