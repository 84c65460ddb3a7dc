"""Adapters as pure transforms of a frozen parameter tree.

The whole library rests on one idea: an adapter is a small pytree of its own,
and adapting a model is a function of two trees,

    params = apply(frozen, adapter, config, mode)
    logits = model.apply({"params": params}, batch)

so ``jax.grad`` is taken with respect to ``adapter.trainable`` alone; the frozen
tree is a constant, never differentiated, never copied into optimiser state or
checkpoints.

Modes:

* ``"factored"`` puts an :class:`~jaxlora.adapters.base.AdaptedKernel` node where
  each targeted kernel was. :class:`jaxlora.nn.Dense` computes
  ``x @ K + s * (dropout(x) @ a) @ b`` from the node's ``factors()``:
  ``K + s * delta`` is never formed.
* ``"merged"`` puts the plain array ``K + s * delta`` there, so any model made of
  arrays (any Flax Linen/NNX model, any pytree-of-arrays function) runs unchanged.
  Low-rank dropout does not exist in this mode.

An :class:`Adapter` keeps three kinds of parameters apart:

* ``trainable["lowrank"]``: the variant's trained parameters;
* ``trainable["full"]``: frozen leaves the user chose to train in full (a head);
* ``fixed``: frozen but part of the adapter (B-only's random ``a``), saved with it.

The frozen tree is an argument of the jitted function, never closed over (a
closed-over array becomes a constant folded into the compiled program):

>>> frozen = {"query": {"kernel": jnp.ones((4, 4))}, "value": {"kernel": jnp.ones((4, 4))}}
>>> cfg = jaxlora.AdapterConfig("lora", rank=2, alpha=4, targets=("query", "value"))
>>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
>>> def loss_fn(trainable, frozen, x):
...     params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), cfg, mode="merged")
...     return jnp.sum((x @ params["query"]["kernel"] @ params["value"]["kernel"]) ** 2)
>>> grads = jax.jit(jax.grad(loss_fn))(adapter.trainable, frozen, jnp.ones((3, 4)))
>>> grads["lowrank"]["query"]["b"].shape
(2, 4)
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlora.adapters.base import FlatTree, MultiAxisKernel, Path, Target, get_variant
from jaxlora.adapters.config import AdapterConfig
from jaxlora.adapters.stacks import layer_view, stacked_nodes
from jaxlora.adapters.targets import find_targets, find_trainable_leaves, flatten, join, unflatten

MODES = ("factored", "merged")


class Adapter(NamedTuple):
    """An adapter's numbers. ``trainable = {"lowrank": ..., "full": ...}``; ``fixed`` is frozen."""

    trainable: dict
    fixed: dict


class LoraFactors(NamedTuple):
    """A variant's update for one matrix as plain LoRA: ``delta = scale * a @ b``."""

    a: jax.Array  # (d_in, r)
    b: jax.Array  # (r, d_out)
    scale: float


# ---------------------------------------------------------------------------
# Flat <-> nested for variant trees: variants speak {path: {name: array}}.


def _nest(tree: Mapping[Path, Mapping[str, Any]]) -> dict:
    return unflatten({path + (name,): leaf for path, leaves in tree.items() for name, leaf in leaves.items()})


def _group(nested: Mapping) -> FlatTree:
    grouped: dict[Path, dict[str, Any]] = {}
    for path, leaf in flatten(nested).items():
        grouped.setdefault(path[:-1], {})[path[-1]] = leaf
    return grouped


# ---------------------------------------------------------------------------
# Public API


def init(rng: jax.Array, frozen: Mapping, config: AdapterConfig) -> Adapter:
    """Create an adapter for ``frozen`` (the model's plain ``params`` collection).

    Raises a ``ValueError`` that says how to fix it when a pattern matches nothing,
    a rank is too large, or the variant cannot adapt a matched matrix.

    >>> frozen = {"query": {"kernel": jnp.ones((4, 4))}, "classifier": {"kernel": jnp.ones((4, 2))}}
    >>> adapter = jaxlora.init(jax.random.key(0), frozen,
    ...                        AdapterConfig("lora", rank=2, targets=("query",), trainable=("classifier",)))
    >>> jax.tree.map(jnp.shape, adapter.trainable)
    {'full': {'classifier': {'kernel': (4, 2)}}, 'lowrank': {'query': {'a': (4, 2), 'b': (2, 4)}}}
    """
    flat = flatten(frozen)
    view = layer_view(flat, config.layer_stacks)
    targets = find_targets(view.leaves, config)
    lowrank, fixed = _variant_init(rng, targets, config)
    trained = find_trainable_leaves(view.leaves, config, targets)
    full = {p: jnp.asarray(view.value(flat, p), jnp.float32) for p in trained}
    return Adapter(trainable={"lowrank": _nest(lowrank), "full": unflatten(full)}, fixed=_nest(fixed))


def apply(frozen: Mapping, adapter: Adapter, config: AdapterConfig, mode: str = "factored") -> dict:
    """Params the model can use: ``frozen`` with ``adapter`` applied.

    Args:
      frozen: the model's plain ``params`` tree (arrays; may be bf16).
      adapter: from :func:`init` (its ``trainable`` may be replaced by the tree
        being differentiated).
      config: the adapter's config.
      mode: ``"factored"`` (low-rank nodes for :class:`jaxlora.nn.Dense`) or
        ``"merged"`` (plain arrays, any model).

    >>> frozen = {"query": {"kernel": jnp.eye(4)}}
    >>> cfg = AdapterConfig("lora", rank=2, targets=("query",))
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    >>> type(jaxlora.apply(frozen, adapter, cfg)["query"]["kernel"]).__name__
    'LoRAKernel'
    >>> jaxlora.apply(frozen, adapter, cfg, mode="merged")["query"]["kernel"].shape
    (4, 4)
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    flat = flatten(frozen)
    view = layer_view(flat, config.layer_stacks)
    targets = find_targets(view.leaves, config)
    stacked = {p: t for p, t in targets.items() if p + ("kernel",) in view.origin}
    plain = {p: t for p, t in targets.items() if p not in stacked}
    make_node = _node_maker(adapter, config, targets)
    for path, t in plain.items():
        node = make_node(t, flat[path + ("kernel",)])
        # A multi-axis kernel's node holds its matrix view; the merged kernel goes back to the
        # stored layout so the unmodified layer reads it as before.
        if mode == "merged":
            flat[path + ("kernel",)] = t.from_matrix(node.merged())
        elif len(t.kernel_shape) > 2:
            flat[path + ("kernel",)] = MultiAxisKernel(flat[path + ("kernel",)], node)
        else:
            flat[path + ("kernel",)] = node
    for kernel_path, node in stacked_nodes(flat, view, stacked, make_node).items():
        flat[kernel_path] = jax.vmap(lambda n: n.merged())(node) if mode == "merged" else node
    for path, leaf in flatten(adapter.trainable.get("full", {})).items():
        if path not in view.leaves:
            raise ValueError(f"Adapter trains {join(path)!r} in full, but the frozen params have no such leaf.")
        view.assign(flat, path, leaf.astype(jnp.result_type(view.leaves[path])))
    return unflatten(flat)


def merge(frozen: Mapping, adapter: Adapter, config: AdapterConfig) -> dict:
    """Frozen params with the adapter folded in: plain arrays, for inference or export.

    >>> frozen = {"query": {"kernel": jnp.eye(4)}}
    >>> cfg = AdapterConfig("lora", rank=2, targets=("query",))
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)   # b = 0: the update starts at zero
    >>> bool(jnp.all(jaxlora.merge(frozen, adapter, cfg)["query"]["kernel"] == jnp.eye(4)))
    True
    """
    return apply(frozen, adapter, config, mode="merged")


def unmerge(merged: Mapping, adapter: Adapter, config: AdapterConfig, *, max_iters: int = 100, tol: float = 1e-7) -> dict:
    """Recover the frozen params from :func:`merge`'s output.

    Most variants' update does not depend on ``K`` and one subtraction is exact.
    CondLoRA's does (its factors are computed from ``K``), so ``K`` is found as
    the fixed point of ``K = M - s * delta(K)``; an error says so if that does not
    converge (then keep the frozen params instead of unmerging). Leaves trained
    in full have no frozen original to go back to and keep their trained values.

    >>> frozen = {"query": {"kernel": jax.random.normal(jax.random.key(1), (6, 6))}}
    >>> cfg = AdapterConfig("condlora", rank=2, targets=("query",))
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    >>> adapter.trainable["lowrank"]["query"]["theta_b"] = 0.01 * jnp.ones((2, 6))
    >>> again = jaxlora.unmerge(jaxlora.merge(frozen, adapter, cfg), adapter, cfg)
    >>> bool(jnp.allclose(again["query"]["kernel"], frozen["query"]["kernel"], atol=1e-5))
    True
    """
    flat = flatten(merged)
    result = dict(flat)
    view = layer_view(flat, config.layer_stacks)
    targets = find_targets(view.leaves, config)
    for path, node in _nodes(flat, adapter, config, targets, view).items():
        m = jnp.asarray(node.kernel, jnp.float32)
        k = m
        for _ in range(max_iters):
            new_k = m - node.scale * node.replace(kernel=k).delta().astype(jnp.float32)
            change = float(jnp.max(jnp.abs(new_k - k)))
            k = new_k
            if change <= tol * max(1.0, float(jnp.max(jnp.abs(m)))):
                break
        else:
            raise ValueError(
                f"unmerge did not converge for {join(path)!r}: this variant's update depends on the "
                f"frozen weight and is too large to invert by iteration. Keep the frozen params."
            )
        kernel = targets[path].from_matrix(k).astype(jnp.result_type(view.leaves[path + ("kernel",)]))
        view.assign(result, path + ("kernel",), kernel)
    return unflatten(result)


def to_lora_factors(frozen: Mapping, adapter: Adapter, config: AdapterConfig) -> dict[Path, LoraFactors]:
    """Every adapted matrix as plain LoRA factors: ``{module_path: LoraFactors(a, b, scale)}``.

    CondLoRA's factors are computed per layer from its frozen weight; MTLoRA's
    ``T`` is folded into ``a``. ``scale * a @ b`` equals the variant's own update.

    >>> frozen = {"layer_0": {"query": {"kernel": jnp.eye(4)}}}
    >>> cfg = AdapterConfig("mtlora", rank=2, targets=("query",), options={"structure": "ctcm"})
    >>> factors = jaxlora.to_lora_factors(frozen, jaxlora.init(jax.random.key(0), frozen, cfg), cfg)
    >>> a, b, scale = factors[("layer_0", "query")]
    >>> a.shape, b.shape, scale
    ((4, 2), (2, 4), 4.0)
    """
    flat = flatten(frozen)
    view = layer_view(flat, config.layer_stacks)
    nodes = _nodes(flat, adapter, config, find_targets(view.leaves, config), view)
    return {path: LoraFactors(*node.factors(), node.scale) for path, node in nodes.items()}


class ParamCount(NamedTuple):
    """Parameter counts of an adapter (and the frozen model when given)."""

    lowrank: int
    full: int
    fixed: int
    frozen: int | None = None

    @property
    def trainable(self) -> int:
        return self.lowrank + self.full


def _size(tree) -> int:
    # A quantized kernel (jaxlora.quantize) counts the numbers it stands for, not its codes and scales.
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "dequantize"))
    return int(sum(np.size(x) for x in leaves))


def count_params(adapter: Adapter, frozen: Mapping | None = None) -> ParamCount:
    """Trainable (low-rank and full), fixed, and (optionally) frozen parameter counts.

    >>> frozen = {f"layer_{i}": {"query": {"kernel": jnp.ones((8, 8))}} for i in range(3)}
    >>> cfg = AdapterConfig("condlora", rank=2, targets=("query",))
    >>> jaxlora.count_params(jaxlora.init(jax.random.key(0), frozen, cfg), frozen)   # 2 * r * d, any depth
    ParamCount(lowrank=32, full=0, fixed=0, frozen=192)
    """
    return ParamCount(
        lowrank=_size(adapter.trainable.get("lowrank", {})),
        full=_size(adapter.trainable.get("full", {})),
        fixed=_size(adapter.fixed),
        frozen=None if frozen is None else _size(frozen),
    )


def param_table(frozen: Mapping, adapter: Adapter, config: AdapterConfig) -> str:
    """A readable table of what the adapter trains, by module type.

    >>> frozen = {"query": {"kernel": jnp.ones((8, 8))}, "classifier": {"kernel": jnp.ones((8, 2))}}
    >>> cfg = AdapterConfig("bonly", rank=2, targets=("query",), trainable=("classifier",))
    >>> print(jaxlora.param_table(frozen, jaxlora.init(jax.random.key(0), frozen, cfg), cfg))
    adapter bonly
    module           matrices  shape (in, out)     rank   trainable     fixed
    query                   1  8x8                  2          16        16
    trained in full                                            16
    total trainable 32 of 80 frozen (40.000%); fixed 16
    """
    targets = find_targets(layer_view(flatten(frozen), config.layer_stacks).leaves, config)
    lowrank = _group(adapter.trainable.get("lowrank", {}))
    fixed = _group(adapter.fixed)
    rows: dict[str, list] = {}
    for path, t in targets.items():
        row = rows.setdefault(t.group, [0, set(), set(), 0, 0])
        row[0] += 1
        row[1].add(t.shape)
        row[2].add(t.rank)
    # Parameters are attributed by the group their tree key belongs to, so shared
    # parameters (CondLoRA) count once.
    for tree, col in ((lowrank, 3), (fixed, 4)):
        for key, leaves in tree.items():
            group = key[-1]
            if group in rows:
                rows[group][col] += sum(int(np.size(v)) for v in leaves.values())
    count = count_params(adapter, frozen)
    lines = [
        f"adapter {config.describe()}",
        f"{'module':<16}{'matrices':>9}  {'shape (in, out)':<18}{'rank':>6}{'trainable':>12}{'fixed':>10}",
    ]
    for group, (n, shapes, ranks, tr, fx) in sorted(rows.items()):
        shape = ",".join(f"{a}x{b}" for a, b in sorted(shapes))
        rank = ",".join(str(r) for r in sorted(ranks))
        lines.append(f"{group:<16}{n:>9}  {shape:<18}{rank:>6}{tr:>12,}{fx:>10,}")
    lines.append(f"{'trained in full':<16}{'':>9}  {'':<18}{'':>6}{count.full:>12,}{'':>10}")
    pct = 100.0 * count.trainable / count.frozen if count.frozen else 0.0
    lines.append(f"total trainable {count.trainable:,} of {count.frozen:,} frozen ({pct:.3f}%); fixed {count.fixed:,}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Internals


def _nodes(flat: Mapping[Path, Any], adapter: Adapter, config: AdapterConfig, targets, view) -> dict:
    """The factored node of every target, one per layer (its kernel as a matrix; a slice inside a
    layer stack, read through ``view``), after checking the adapter fits."""
    make_node = _node_maker(adapter, config, targets)
    return {path: make_node(t, view.value(flat, path + ("kernel",))) for path, t in targets.items()}


def _node_maker(adapter: Adapter, config: AdapterConfig, targets):
    """``make_node(target, kernel)``: the variant's node for one target, after checking the adapter fits."""
    variant = get_variant(config.variant)
    lowrank = _group(adapter.trainable.get("lowrank", {}))
    fixed = _group(adapter.fixed)
    _check_fits(targets, config, lowrank, fixed)
    return lambda t, kernel: variant.node(t, t.as_matrix(kernel), lowrank, fixed, config)


def _variant_init(rng: jax.Array, targets: Mapping[Path, Target], config: AdapterConfig) -> tuple[FlatTree, FlatTree]:
    """The variant's ``(trainable, fixed)`` trees, after its ``check`` of the targets (the one place it runs)."""
    variant = get_variant(config.variant)
    variant.check(targets, config)
    return variant.init(rng, targets, config)


@functools.lru_cache(maxsize=64)
def _expected_shapes(target_key: tuple, config: AdapterConfig):
    targets = {t.path: t for t in target_key}
    shapes = jax.eval_shape(lambda: _variant_init(jax.random.key(0), targets, config))
    return tuple(
        {(p, n): tuple(v.shape) for p, leaves in tree.items() for n, v in leaves.items()} for tree in shapes
    )


def _check_fits(targets: Mapping[Path, Target], config: AdapterConfig, lowrank: FlatTree, fixed: FlatTree) -> None:
    key = tuple(sorted(targets.values(), key=lambda t: t.path))
    expected = _expected_shapes(key, config)
    for what, exp, tree in (("trainable", expected[0], lowrank), ("fixed", expected[1], fixed)):
        got = {(p, n): tuple(np.shape(v)) for p, leaves in tree.items() for n, v in leaves.items()}
        if got == exp:
            continue
        missing = sorted(join(p + (n,)) for p, n in set(exp) - set(got))
        extra = sorted(join(p + (n,)) for p, n in set(got) - set(exp))
        wrong = sorted(
            f"{join(p + (n,))}: adapter {got[p, n]} vs expected {exp[p, n]}"
            for p, n in set(exp) & set(got)
            if got[p, n] != exp[p, n]
        )
        detail = "".join(
            f"\n  {label}: {items[:8]}{' ...' if len(items) > 8 else ''}"
            for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
            if items
        )
        raise ValueError(
            f"The {config.variant!r} adapter's {what} parameters do not fit these frozen params and "
            f"config (was it made for another model, rank or target list?):{detail}"
        )
