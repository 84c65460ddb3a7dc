"""Where every array lives: a (data, fsdp, tensor) device mesh and the NamedShardings of a run.

One mesh, three axes:

* ``data``: pure data parallelism, batch rows split, parameters replicated;
* ``fsdp``: batch rows split *and* large parameters split along their ``embed`` dimension
  (ZeRO-3 style: XLA gathers them for each use);
* ``tensor``: heads / MLP / vocabulary dimensions split (Megatron style).

Frozen parameters are placed by their axis names through flax's logical rules
(:data:`DEFAULT_RULES`): jaxlora's models name them (:func:`jaxlora.models.logical_axes`); any
other model names them itself (``nn.with_logical_partitioning`` / ``nn.with_partitioning`` in its
initialisers, seen through an abstract init function), or its params are already placed on the
mesh. A dimension that the mesh axis does not divide stays whole (so any model runs on any mesh).

Adapter factors are placed like the weight they adapt: ``a`` ``(d_in, r)`` is split along
``d_in`` as the kernel's input axis is, ``b`` ``(r, d_out)`` along ``d_out`` as its output axis
is, and the rank axis is never split, so ``x @ a`` and ``(x @ a) @ b`` need no more
communication than ``x @ K`` (adapter_shardings with ``frozen`` and ``config``). The ``fsdp``
part of that placement applies only to factors of at least ``adapter_fsdp_min_size`` numbers
(``config.mesh.adapter_fsdp_min_size``, default 1M): ``fsdp`` splits a weight's storage and
gathers it at each use, and for a small factor the saving is a few bytes while each gather is
one more collective per use. Measured on the one-block model of
tests/training/test_sharding_params.py on a (data=2, fsdp=2, tensor=2) mesh, the factored step
compiles to 36 collectives with the factors split over fsdp as well (merged: 18), and to 14 with
them split over tensor only (merged: 14). Without ``frozen`` and ``config``, small leaves are
replicated and leaves of at least ``adapter_fsdp_min_size`` numbers split over ``fsdp``. Leaves
trained in full (a head, or the whole model) keep the frozen layout of the same path.
Optimiser moments follow their parameter. Batches are split over ``(data, fsdp)``.

The same code runs on one CPU, on ``--xla_force_host_platform_device_count=8``, on a GPU and on
a TPU slice; only the mesh sizes in the config change.

>>> mesh = make_mesh(data=-1)   # every device on the data axis
>>> batch = put_batch({"input_ids": np.zeros((4, 16), np.int32), "idx": np.arange(4)}, batch_sharding(mesh),
...                   keys=("input_ids",))   # idx stays on the host
>>> sorted(batch), batch["input_ids"].sharding.spec
(['input_ids'], P(('data', 'fsdp'),))
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from flax import nnx
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlora.models import logical_axes
from jaxlora.nn.quantize import QuantizedKernel

__all__ = [
    "AXES",
    "BATCH_AXES",
    "DEFAULT_RULES",
    "make_mesh",
    "replicated",
    "batch_sharding",
    "fit_spec",
    "frozen_shardings",
    "adapter_shardings",
    "like_params",
    "process_rows",
    "put_batch",
    "put_tree",
]

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Logical parameter axis -> mesh axis. "embed" is the fsdp axis; the wide dimensions go to tensor.
DEFAULT_RULES = (
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("labels", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh with axes ``("data", "fsdp", "tensor")``; one size may be -1 (all remaining devices).

    >>> dict(make_mesh(data=-1, fsdp=1).shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    True
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = [int(data), int(fsdp), int(tensor)]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"Mesh sizes must be positive, with at most one -1 (fill); got data={data}, fsdp={fsdp}, tensor={tensor}.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"Mesh fsdp/tensor/data sizes {sizes} do not divide the {len(devices)} available devices."
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"The mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs {math.prod(sizes)} devices, "
            f"but {len(devices)} are available: set --config.mesh.data=-1 to use all of them."
        )
    try:
        grid = mesh_utils.create_device_mesh(tuple(sizes), devices=devices)
    except (ValueError, NotImplementedError, AssertionError):  # unusual topologies: plain order
        grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array every device holds whole.

    >>> replicated(make_mesh()).spec
    P()
    """
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over ``(data, fsdp)``, everything else whole.

    >>> batch_sharding(make_mesh()).spec
    P(('data', 'fsdp'),)
    """
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    names = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[name] for name in names)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """``spec`` with every dimension the mesh cannot split evenly left whole.

    >>> from types import SimpleNamespace
    >>> mesh_with_fsdp_4 = SimpleNamespace(shape={"data": 1, "fsdp": 4, "tensor": 1})   # only .shape is read
    >>> fit_spec(PartitionSpec("fsdp", None), (37, 8), mesh_with_fsdp_4), fit_spec(PartitionSpec("fsdp"), (32, 8), mesh_with_fsdp_4)
    (P(None, None), P('fsdp', None))
    """
    entries = list(spec) + [None] * (len(shape) - len(spec))
    return PartitionSpec(*[
        axes if axes is not None and dim % _axis_size(mesh, axes) == 0 else None
        for axes, dim in zip(entries, shape)
    ])


def frozen_shardings(source: Any, params_or_mesh: Any = None, mesh: Mesh | None = None, rules=DEFAULT_RULES) -> dict:
    """NamedShardings of a model's parameters, from their axis names and ``rules``.

    ``source`` is one of

    * a jaxlora model (``nn.Module`` from :mod:`jaxlora.models`) followed by its params:
      ``frozen_shardings(module, params, mesh)``;
    * an abstract init function, ``lambda: model.init(key, x)`` (or ``nnx.state`` of a model
      built under ``nnx.eval_shape``): nothing is computed, and the names its initialisers give
      (``nn.with_logical_partitioning`` through ``rules``, ``nn.with_partitioning`` as mesh axes)
      place each leaf: ``frozen_shardings(init_fn, mesh)``;
    * the params themselves: boxed leaves as above, arrays already placed on ``mesh`` keep their
      placement, anything else is replicated: ``frozen_shardings(params, mesh)``.

    >>> part = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
    >>> model, x = nn.Dense(8, kernel_init=part), np.ones((2, 4), np.float32)
    >>> frozen_shardings(lambda: model.init(jax.random.key(0), x), make_mesh())["kernel"].spec
    P('fsdp', 'tensor')
    """
    if isinstance(source, nn.Module):
        axes = logical_axes(source, params_or_mesh)

        def place(logical: PartitionSpec, leaf) -> NamedSharding:
            mesh_spec = nn.logical_to_mesh_axes(tuple(logical), rules)
            if isinstance(leaf, QuantizedKernel):
                # Codes and scales keep the kernel's axes (blocks run along its last one), so each is split
                # like the kernel wherever the mesh divides it, and every shard dequantizes on its own.
                return jax.tree.map(lambda a: NamedSharding(mesh, fit_spec(mesh_spec, np.shape(a), mesh)), leaf)
            return NamedSharding(mesh, fit_spec(mesh_spec, np.shape(leaf), mesh))

        return jax.tree.map(place, axes, params_or_mesh, is_leaf=lambda x: isinstance(x, PartitionSpec))
    mesh = params_or_mesh if mesh is None else mesh
    tree = jax.eval_shape(source) if callable(source) else source
    if isinstance(tree, Mapping) and set(tree) == {"params"}:
        tree = tree["params"]
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(nnx.State(jax.tree.map(_nnx_box, tree, is_leaf=_is_nnx_variable)))

    def place_leaf(leaf) -> NamedSharding:
        return NamedSharding(mesh, fit_spec(_leaf_spec(leaf, mesh, rules), np.shape(_unboxed(leaf)), mesh))

    return jax.tree.map(place_leaf, tree, is_leaf=lambda x: isinstance(x, (nn.Partitioned, PartitionSpec)))


def _is_nnx_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _nnx_box(variable):
    names = variable.get_metadata().get("sharding_names") or variable.get_metadata().get("sharding")
    value = variable.get_value()
    return variable.replace(nn.Partitioned(value, tuple(names)) if names else value)


def _unboxed(leaf):
    return leaf.unbox() if isinstance(leaf, nn.Partitioned) else leaf


def _leaf_spec(leaf, mesh: Mesh, rules) -> PartitionSpec:
    if isinstance(leaf, nn.LogicallyPartitioned):
        return nn.logical_to_mesh_axes(tuple(leaf.names), rules)
    if isinstance(leaf, nn.Partitioned):
        return PartitionSpec(*leaf.names)
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh.shape == mesh.shape:
        return sharding.spec
    return PartitionSpec()


def _small_or_fsdp(leaf, mesh: Mesh, min_size: int) -> NamedSharding:
    shape = np.shape(leaf)
    fsdp = mesh.shape["fsdp"]
    if fsdp == 1 or int(np.prod(shape)) < min_size:
        return replicated(mesh)
    # Split the largest dimension fsdp divides; none: keep it whole.
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            return NamedSharding(mesh, PartitionSpec(*[("fsdp" if d == dim else None) for d in range(len(shape))]))
    return replicated(mesh)


def _path_lookup(tree: Mapping, path: tuple) -> Any:
    node = tree
    for key in path:
        node = node[key]
    return node


def adapter_shardings(
    trainable: Mapping, fixed: Mapping, mesh: Mesh, frozen_sh: Mapping | None, min_size: int = 1 << 20,
    *, frozen: Mapping | None = None, config=None,
) -> tuple[dict, dict]:
    """Shardings of ``(trainable, fixed)``; ``"full"`` leaves like their frozen leaf.

    Given the ``frozen`` params (arrays or ``ShapeDtypeStruct``) and the adapter ``config``, the
    factors are placed like the weight they adapt (``a`` along ``d_in`` as the kernel's input
    axis, ``b`` along ``d_out`` as its output axis, the rank never split; CondLoRA's shared maps
    likewise, by the side of the kernel each contracts with), over ``fsdp`` only when they have
    at least ``min_size`` numbers (the module docstring says why). Otherwise small leaves are
    replicated and leaves of at least ``min_size`` numbers split over ``fsdp``.

    >>> import jaxlora
    >>> frozen = {"mlp": {"kernel": np.ones((8, 16), np.float32)}}
    >>> mesh = make_mesh()
    >>> frozen_sh = {"mlp": {"kernel": NamedSharding(mesh, PartitionSpec("fsdp", "tensor"))}}
    >>> cfg = jaxlora.AdapterConfig("lora", rank=2, targets=("mlp",))
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    >>> def factor_specs(min_size):
    ...     trainable_sh, _ = adapter_shardings(adapter.trainable, adapter.fixed, mesh, frozen_sh, min_size,
    ...                                         frozen=frozen, config=cfg)
    ...     return trainable_sh["lowrank"]["mlp"]["a"].spec, trainable_sh["lowrank"]["mlp"]["b"].spec
    >>> factor_specs(min_size=1)          # every factor large enough: exactly like the kernel
    (P('fsdp', None), P(None, 'tensor'))
    >>> factor_specs(min_size=1 << 20)    # small factors: the weight's tensor split, not its fsdp split
    (P(None, None), P(None, 'tensor'))
    """
    like_weights = None
    if frozen is not None and config is not None and frozen_sh is not None:
        like_weights = _factor_specs(frozen, frozen_sh, config, mesh)

    def lowrank_like(tree):
        if like_weights is None:
            return jax.tree.map(lambda leaf: _small_or_fsdp(leaf, mesh, min_size), tree)

        def place(path, leaf):
            keys = tuple(getattr(k, "key", k) for k in path)
            spec = like_weights.get(keys)
            if spec is None:  # MTLoRA's (r, r) transform and anything else without a weight side
                return replicated(mesh)
            if int(np.prod(np.shape(leaf))) < min_size:
                spec = _without_axis(spec, "fsdp")
            return NamedSharding(mesh, fit_spec(spec, np.shape(leaf), mesh))

        return jax.tree_util.tree_map_with_path(place, tree)

    trainable_sh = {}
    for group, subtree in trainable.items():
        if group == "full" and frozen_sh is not None:
            # A leaf trained in full is a copy of a frozen leaf: same path, same layout.
            def same_as_frozen(path, leaf):
                keys = tuple(getattr(k, "key", k) for k in path)
                try:
                    sharding = _path_lookup(frozen_sh, keys)
                except (KeyError, TypeError):
                    return _small_or_fsdp(leaf, mesh, min_size)
                return NamedSharding(mesh, fit_spec(sharding.spec, np.shape(leaf), mesh))

            trainable_sh[group] = jax.tree_util.tree_map_with_path(same_as_frozen, subtree)
        else:
            trainable_sh[group] = lowrank_like(subtree)
    return trainable_sh, lowrank_like(fixed)


def _without_axis(spec: PartitionSpec, axis: str) -> PartitionSpec:
    """``spec`` with mesh axis ``axis`` removed from every dimension."""

    def drop(entry):
        if isinstance(entry, tuple):
            kept = tuple(name for name in entry if name != axis)
            return kept if len(kept) > 1 else (kept[0] if kept else None)
        return None if entry == axis else entry

    return PartitionSpec(*[drop(entry) for entry in spec])


def _matrix_axes(spec: PartitionSpec, dims: tuple[int, ...]):
    """The mesh axes of a group of kernel axes viewed as one (its major axis: a row-major merge)."""
    entries = tuple(spec) + (None,) * (max(dims) + 1 - len(spec))
    return entries[dims[0]]


def _factor_specs(frozen: Mapping, frozen_sh: Mapping, config, mesh: Mesh) -> dict:
    """``{adapter leaf path: PartitionSpec}``: each factor on the side of its weight it multiplies."""
    from jaxlora.adapters.stacks import layer_view  # training -> adapters: the layering's direction
    from jaxlora.adapters.targets import find_targets, flatten

    specs: dict = {}
    # Scanned layers: the factors are per layer, the kernel stacked; its layer axis is not theirs.
    view = layer_view(flatten(frozen), config.layer_stacks)
    for path, target in find_targets(view.leaves, config).items():
        stacked = view.origin.get(path + ("kernel",))
        kernel_sh = _path_lookup(frozen_sh, path + ("kernel",) if stacked is None else stacked[0])
        kernel_spec = (kernel_sh.codes if isinstance(kernel_sh, QuantizedKernel) else kernel_sh).spec
        if stacked is not None:
            kernel_spec = PartitionSpec(*tuple(kernel_spec)[1:])
        d_in_axes = _matrix_axes(kernel_spec, target.in_dims)
        d_out_axes = _matrix_axes(kernel_spec, target.out_dims)
        # Per-matrix factors (LoRA, B-only, A-only, MTLoRA) live under the module's path.
        for prefix in (("lowrank",) + path, path):
            specs[prefix + ("a",)] = PartitionSpec(d_in_axes, None)
            specs[prefix + ("b",)] = PartitionSpec(None, d_out_axes)
        # CondLoRA's shared maps, by the side of K each contracts with: theta_b @ K and the paper's
        # a = K.T @ theta_a.T the input side, the rectangular a = K @ phi_a.T the output side.
        square = target.d_in == target.d_out
        for prefix in (("lowrank", target.group), (target.group,)):
            specs.setdefault(prefix + ("theta_b",), PartitionSpec(None, d_in_axes))
            specs.setdefault(prefix + ("theta_a",), PartitionSpec(None, d_in_axes if square else d_out_axes))
    return specs


def like_params(abstract_state: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for an optimiser state: a leaf whose path ends with a parameter's path (and shape) gets
    that parameter's sharding, anything else (counts, scalars) is replicated.

    >>> import optax
    >>> mesh = make_mesh()
    >>> trainable = {"a": np.ones((4, 2), np.float32)}
    >>> opt_sh = like_params(jax.eval_shape(optax.adam(1e-3).init, trainable), trainable, {"a": replicated(mesh)}, mesh)
    >>> sorted({str(s.spec) for s in jax.tree.leaves(opt_sh)})   # the moments follow "a"; the count is replicated
    ['P()']
    """
    by_path = {}
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_shardings)
    ):
        by_path[tuple(str(k) for k in path)] = (np.shape(leaf), sharding)
    longest = max((len(p) for p in by_path), default=0)

    def place(path, leaf):
        keys = tuple(str(k) for k in path)
        for n in range(min(longest, len(keys)), 0, -1):
            hit = by_path.get(keys[-n:])
            if hit is not None and hit[0] == np.shape(leaf):
                return hit[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(place, abstract_state)


def stacked_like(shardings: Any, stack) -> Any:
    """The shardings of ``stack(tree)`` from those of ``tree``: a leaf that ``stack`` gives a leading
    (layer) axis gets its first layer's sharding with that axis unsplit; others keep theirs.

    ``stack`` is the function that stacks the tree (``optim.stacked_lowrank``'s), run here on index
    stand-ins, so the leaves it groups are exactly the ones it stacks.

    >>> mesh = make_mesh()
    >>> stack = lambda t: {"l": {"w": np.stack([t["l_0"]["w"], t["l_1"]["w"]])}}
    >>> stacked_like({"l_0": {"w": replicated(mesh)}, "l_1": {"w": replicated(mesh)}}, stack)["l"]["w"].spec
    P(None,)
    """
    leaves, treedef = jax.tree.flatten(shardings)
    stacked = stack(jax.tree.unflatten(treedef, [np.array([i]) for i in range(len(leaves))]))

    def sharding_of(index: np.ndarray):
        first = leaves[int(index.reshape(-1)[0])]
        if index.ndim == 1:
            return first
        return NamedSharding(first.mesh, PartitionSpec(None, *first.spec))

    return jax.tree.map(sharding_of, stacked)


def put_tree(tree: Any, shardings: Any) -> Any:
    """``jax.device_put`` of a host tree onto its shardings (works multi-process: every host holds it whole).

    >>> mesh = make_mesh()
    >>> put_tree({"w": np.ones(3)}, {"w": replicated(mesh)})["w"].sharding.spec
    P()
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]), tree, shardings
    )


def process_rows(sharding: NamedSharding, batch_size: int) -> np.ndarray | None:
    """The rows of a ``batch_size``-row batch that this process's devices hold, ascending; None: all of them.

    In a multi-process run each process builds only these rows of every training batch
    (``task.train_batches(..., rows=...)``) and :func:`put_batch` assembles the global batch from
    every process's share. A single process, or a mesh whose batch axes lie within this
    process's devices, holds every row: None.

    >>> process_rows(batch_sharding(make_mesh()), 8) is None
    True
    """
    indices = sharding.addressable_devices_indices_map((int(batch_size),))
    rows = sorted({row for index in indices.values() for row in range(*index[0].indices(int(batch_size)))})
    return None if len(rows) == int(batch_size) else np.asarray(rows, dtype=np.int64)


def put_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding, keys: Sequence[str] | None = None,
              global_rows: int | None = None) -> dict:
    """The arrays of a host batch (those named in ``keys``, default all), rows split by ``sharding``.

    ``batch`` is the whole batch, or, given ``global_rows`` (the whole batch's size), this
    process's share of it: the rows :func:`process_rows` names, in that order. Any set of keys
    works: a task's batch schema is its own.

    The module docstring shows a call; a batch size the batch shards do not divide is refused.
    """
    keys = tuple(batch) if keys is None else tuple(keys)
    if not keys:
        raise ValueError("put_batch got no arrays to place.")
    local_rows = len(batch[keys[0]])
    rows = local_rows if global_rows is None else int(global_rows)
    shards = _axis_size(sharding.mesh, BATCH_AXES)
    if rows % shards:
        raise ValueError(
            f"Batch size {rows} is not divisible by the {shards} batch shards of the mesh (data x fsdp): "
            "choose a batch size that is a multiple of it."
        )
    host = {key: batch[key] for key in keys}
    if local_rows == rows:
        return put_tree(host, {key: sharding for key in host})
    # This process's share: each process passes its own rows, jax assembles the global arrays.
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(x), (rows,) + np.shape(x)[1:])
            for key, x in host.items()}
