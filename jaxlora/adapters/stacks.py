"""Layer stacks: adapters on a model whose layers are scanned, with every name still per layer.

A model that runs its layer stack as one ``nn.scan`` (``scan_layers=True`` in
:mod:`jaxlora.models`, or any Flax model scanned the same way) keeps the parameters
of all ``L`` layers in one subtree whose leaves have a leading layer axis::

    model/layers/self_attn/q_proj/kernel      (L, d_in, d_out)

stands for ``model/layers_0/...`` to ``model/layers_{L-1}/...`` (Flax's own names
for a list of submodules). ``AdapterConfig(layer_stacks=("model/layers",))`` names
such stacks, and then everything a user sees stays per layer:

* targets and patterns match the per-layer paths (``"layers_3/self_attn/q_proj"``,
  ``rank_pattern``, ``trainable``);
* :func:`jaxlora.init` returns the per-layer adapter tree the unrolled model gets
  (the same keys and, with the same seed, the same numbers), so checkpoints, PEFT
  export and CondLoRA's sharing across layers are unchanged;
* :func:`jaxlora.apply` takes the stacked frozen tree and that per-layer adapter and
  puts one stacked node where each stacked kernel is: the adapter's small leaves
  are stacked (inside the jitted loss, so gradients flow back to the per-layer
  tree), the frozen kernel is used as it is, never sliced or copied. The scan
  hands each layer its slice of every leaf of the node.

The frozen weights are stacked once, when a model is loaded or initialised
(:func:`stack_layers`; :func:`unstack_layers` is the way back, for saving).

Every layer of a stack runs the same node type with the same static fields, so
targeted layers of one module type must share rank and alpha (an error names the
layers that differ). Layers a pattern leaves out get a node whose adapter leaves
are all zeros, which adds exactly nothing for every update that is a product of
its factors (every variant in jaxlora).

>>> frozen = {"layers": {"query": {"kernel": jnp.ones((3, 4, 4))}}}          # 3 layers, stacked
>>> cfg = jaxlora.AdapterConfig("lora", rank=2, targets=("query",), layer_stacks=("layers",))
>>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
>>> sorted(adapter.trainable["lowrank"])                                    # per layer, as unrolled
['layers_0', 'layers_1', 'layers_2']
>>> jaxlora.apply(frozen, adapter, cfg)["layers"]["query"]["kernel"].a.shape  # one stacked node
(3, 4, 2)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlora.errors import ConfigError
from jaxlora.util.trees import Path, flatten, unflatten


def stack_paths(stacks: Sequence[str]) -> tuple[Path, ...]:
    """``"model/layers"`` (or ``"model.layers"``) -> ``("model", "layers")``, for each stack.

    >>> stack_paths(("model/layers", "bert.encoder.layer"))
    (('model', 'layers'), ('bert', 'encoder', 'layer'))
    """
    return tuple(tuple(s.replace(".", "/").strip("/").split("/")) for s in stacks)


def layer_name(stack: Path, index: int) -> str:
    """The name layer ``index`` of a stack has in the unrolled model.

    >>> layer_name(("model", "layers"), 3)
    'layers_3'
    """
    return f"{stack[-1]}_{index}"


def _stack_of(path: Path, stacks: tuple[Path, ...]) -> Path | None:
    for stack in stacks:
        if path[: len(stack)] == stack and len(path) > len(stack):
            return stack
    return None


def _leading(leaf) -> int:
    return int(jax.tree.leaves(leaf)[0].shape[0])


def _slice(leaf, index: int):
    # A leaf may be a pytree node (a quantized kernel): every array of it carries the layer axis.
    return jax.tree.map(lambda a: a[index], leaf)


def _stack(leaves: Sequence[Any]):
    arrays = jax.tree.leaves(leaves)
    xp = np if all(isinstance(a, np.ndarray) for a in arrays) else jnp
    return jax.tree.map(lambda *xs: xp.stack(xs), *leaves)


def _layer_count(flat: Mapping[Path, Any], stack: Path) -> int:
    counts = {p: _leading(leaf) for p, leaf in flat.items() if _stack_of(p, (stack,))}
    if not counts:
        raise ConfigError(
            f"layer_stacks names {'/'.join(stack)!r}, but the params have no leaves under it.",
            "Name the scanned module's path (jaxlora.models.layer_stacks(module) gives a jaxlora model's).",
        )
    if len(set(counts.values())) > 1:
        raise ConfigError(
            f"The leaves under the layer stack {'/'.join(stack)!r} differ in their leading (layer) axis: "
            f"{sorted(set(counts.values()))}.",
            "Every leaf of a stack holds one slice per layer; stack the layers with jaxlora.adapters.stack_layers.",
        )
    return next(iter(counts.values()))


def stack_layers(tree: Mapping, stacks: Sequence[str]) -> dict:
    """Per-layer tree -> stacked tree: ``{stack}_{i}/...`` leaves become ``{stack}/...`` with a layer axis.

    NumPy leaves stack in NumPy (host memory, as a checkpoint is loaded), others with ``jnp.stack``.

    >>> tree = {"enc": {"layer_0": {"w": np.zeros(2)}, "layer_1": {"w": np.ones(2)}}, "head": {"w": np.ones(3)}}
    >>> out = stack_layers(tree, ("enc/layer",))
    >>> out["enc"]["layer"]["w"].tolist(), sorted(out)
    ([[0.0, 0.0], [1.0, 1.0]], ['enc', 'head'])
    """
    flat = flatten(tree)
    out = dict(flat)
    for stack in stack_paths(stacks):
        parent, name = stack[:-1], stack[-1]
        layers: dict[int, dict[Path, Any]] = {}
        for path, leaf in flat.items():
            key = path[len(parent)] if len(path) > len(parent) + 1 and path[: len(parent)] == parent else None
            if isinstance(key, str) and key.startswith(name + "_") and key[len(name) + 1:].isdigit():
                layers.setdefault(int(key[len(name) + 1:]), {})[path[len(parent) + 1:]] = leaf
                del out[path]
        if not layers:
            raise ConfigError(
                f"No layers named {name}_0, {name}_1, ... under {'/'.join(parent) or 'the root'} to stack.",
                "Pass the per-layer tree of the unrolled model, and the stack's path (e.g. 'model/layers').",
            )
        if sorted(layers) != list(range(len(layers))) or len({tuple(sorted(v)) for v in layers.values()}) > 1:
            raise ConfigError(
                f"The layers under {'/'.join(stack)} do not form a stack: indices {sorted(layers)}, "
                "and every layer must have the same leaves.",
                "Stack only the complete, identical layers of one model.",
            )
        for rest in layers[0]:
            out[stack + rest] = _stack([layers[i][rest] for i in range(len(layers))])
    return unflatten(out)


def unstack_layers(tree: Mapping, stacks: Sequence[str]) -> dict:
    """Stacked tree -> per-layer tree (the inverse of :func:`stack_layers`).

    >>> unstack_layers({"enc": {"layer": {"w": np.arange(4).reshape(2, 2)}}}, ("enc/layer",))
    {'enc': {'layer_0': {'w': array([0, 1])}, 'layer_1': {'w': array([2, 3])}}}
    """
    flat = flatten(tree)
    out = {}
    for path, leaf in flat.items():
        stack = _stack_of(path, stack_paths(stacks))
        if stack is None:
            out[path] = leaf
            continue
        rest = path[len(stack):]
        for i in range(_leading(leaf)):
            out[stack[:-1] + (layer_name(stack, i),) + rest] = _slice(leaf, i)
    return unflatten(out)


class LayerView(NamedTuple):
    """A flat stacked tree seen per layer.

    ``leaves``: every per-layer path; leaves outside stacks are the tree's own,
    leaves inside stacks are shape-only stand-ins (``jax.ShapeDtypeStruct``, or a
    quantized node of them), enough to match targets. ``origin`` maps each
    per-layer path inside a stack to ``(stacked leaf path, layer index)``.
    """

    leaves: dict
    origin: dict

    def value(self, flat: Mapping[Path, Any], path: Path):
        """The real leaf at a per-layer ``path`` (a slice of the stacked leaf; lazy under ``jit``)."""
        if path not in self.origin:
            return flat[path]
        stacked, index = self.origin[path]
        return _slice(flat[stacked], index)

    def assign(self, flat: dict, path: Path, value) -> None:
        """Write ``value`` at a per-layer ``path`` of ``flat`` (into its layer's slice when stacked)."""
        if path not in self.origin:
            flat[path] = value
            return
        stacked, index = self.origin[path]
        flat[stacked] = jnp.asarray(flat[stacked]).at[index].set(value)


def layer_view(flat: Mapping[Path, Any], stacks: Sequence[str]) -> LayerView:
    """The per-layer :class:`LayerView` of a flat params tree (the tree itself when ``stacks`` is empty).

    >>> view = layer_view({("layers", "w"): np.zeros((2, 4, 3))}, ("layers",))
    >>> {p: s.shape for p, s in view.leaves.items()}, view.origin[("layers_1", "w")]
    ({('layers_0', 'w'): (4, 3), ('layers_1', 'w'): (4, 3)}, (('layers', 'w'), 1))
    """
    stacks = stack_paths(stacks)
    if not stacks:
        return LayerView(dict(flat), {})
    counts = {stack: _layer_count(flat, stack) for stack in stacks}
    leaves, origin = {}, {}
    for path, leaf in flat.items():
        stack = _stack_of(path, stacks)
        if stack is None:
            leaves[path] = leaf
            continue
        shape = jax.eval_shape(lambda x: _slice(x, 0), leaf)
        for i in range(counts[stack]):
            layer_path = stack[:-1] + (layer_name(stack, i),) + path[len(stack):]
            leaves[layer_path] = shape
            origin[layer_path] = (path, i)
    return LayerView(leaves, origin)


def stacked_nodes(
    flat: Mapping[Path, Any], view: LayerView, targets: Mapping[Path, Any], make_node: Callable[[Any, Any], Any]
) -> dict[Path, Any]:
    """One stacked node per stacked kernel that some layer's target adapts: ``{stacked kernel path: node}``.

    ``targets`` are the per-layer targets inside stacks; ``make_node(target, kernel)`` is the
    variant's node for one layer. Each layer's node is built on its kernel slice, the slices are
    dropped, the adapter leaves stacked, and the stacked frozen kernel put back whole.
    """
    groups: dict[Path, dict[int, Any]] = {}
    for path, t in targets.items():
        stacked, index = view.origin[path + ("kernel",)]
        groups.setdefault(stacked, {})[index] = t
    nodes = {}
    for stacked, by_layer in groups.items():
        _check_alike(stacked, by_layer)
        sample = next(iter(by_layer.values()))
        if len(sample.kernel_shape) != 2:
            raise ConfigError(
                f"{'/'.join(stacked)}: a stacked kernel of more than two axes per layer "
                f"{tuple(sample.kernel_shape)} cannot carry an adapter yet.",
                "Run that model unrolled (scan_layers=False), or stack only 2-D kernels.",
            )
        count = _leading(flat[stacked])
        built = {i: make_node(t, view.value(flat, t.path + ("kernel",))).replace(kernel=None)
                 for i, t in by_layer.items()}
        structures = {jax.tree.structure(n) for n in built.values()}
        if len(structures) > 1:
            raise ConfigError(
                f"The adapted layers of {'/'.join(stacked)} get adapter nodes of different kinds, so they "
                "cannot run in one scan.",
                "Give every layer of a stack the same adapter settings, or set scan_layers=False.",
            )
        zero = jax.tree.map(jnp.zeros_like, next(iter(built.values())))
        node = _stack([built.get(i, zero) for i in range(count)])
        nodes[stacked] = node.replace(kernel=flat[stacked])
    return nodes


def _check_alike(stacked: Path, by_layer: Mapping[int, Any]) -> None:
    settings: dict[tuple, list[str]] = {}
    for i, t in sorted(by_layer.items()):
        settings.setdefault((t.rank, t.alpha), []).append("/".join(t.path))
    if len(settings) > 1:
        listed = "; ".join(f"rank {r}, alpha {a:g}: {', '.join(paths)}" for (r, a), paths in sorted(settings.items()))
        raise ConfigError(
            f"scan_layers runs the stacked layers as one scan, so the {stacked[-2]} modules of every layer "
            f"({'/'.join(stacked[:-1])}) need one rank and alpha, but they differ: {listed}.",
            "Give those layers one rank/alpha (rank_pattern, alpha_pattern), or set scan_layers=False.",
        )
