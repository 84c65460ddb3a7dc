"""The layer stack of a transformer: unrolled or one ``nn.scan``, with a remat policy.

Every jaxlora model runs its ``L`` identical blocks through :func:`run_layers`. Two
settings of the model spec choose how:

* ``scan_layers=False`` (default): ``L`` modules named ``{name}_0 .. {name}_{L-1}``,
  each compiled separately. Compile time grows with depth.
* ``scan_layers=True``: one ``nn.scan`` over a single block whose parameters carry a
  leading layer axis, stored under ``{name}`` (``model/layers/self_attn/q_proj/kernel``
  of shape ``(L, d, d)``; the logical axis name of that axis is ``"layers"``). The block
  is compiled once, whatever the depth.

The design, for memory at scale:

* **Frozen weights are stacked once**, when a model is loaded or initialised
  (``from_pretrained(..., scan_layers=True)``, ``from_config``), never per step: the
  jitted step takes the stacked tree as its argument and the scan slices it in place.
  :func:`stack_params` / :func:`unstack_params` convert between the two layouts;
  ``save_pretrained`` unstacks, so checkpoint files are the same either way.
* **The adapter stays per layer**, the tree the unrolled model gets (same keys, same
  numbers), so checkpoints, PEFT import/export, CondLoRA's sharing across layers and
  target patterns (``layers_3/self_attn/q_proj``) do not change. ``jaxlora.init``,
  ``apply`` and ``merge`` read the stacked frozen tree through
  ``AdapterConfig(layer_stacks=layer_stacks(module))``: ``apply`` stacks the adapter's
  small leaves into one node per stacked kernel (:mod:`jaxlora.adapters.stacks`), inside
  the jitted loss, so gradients arrive per layer.
* Every layer of a scan runs the same node, so per-layer ranks or alphas that differ
  within one module type are refused, naming the layers.
* Dropout inside a scan draws each layer's mask from a split of the step's key: the same
  distribution as unrolled, other draws.

Remat (``remat=``): ``"none"``; ``"full"`` (``True``) keeps only each layer's input and
recomputes the layer in the backward pass; ``"dots_saveable"`` keeps the matmul outputs
and recomputes the cheap elementwise work in between
(``jax.checkpoint_policies.dots_saveable``).

>>> import jaxlora.models as jm
>>> module, params = jm.from_config(jm.tiny_config("llama"), scan_layers=True, remat="dots_saveable")
>>> params["model"]["layers"]["self_attn"]["q_proj"]["kernel"].shape   # (layers, d_in, d_out)
(2, 32, 32)
>>> layer_stacks(module), sorted(unstack_params(params, module)["model"])[:2]
(('model/layers',), ['embed_tokens', 'layers_0'])
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlora.adapters.stacks import stack_layers, unstack_layers
from jaxlora.errors import ConfigError

REMAT_POLICIES = ("none", "full", "dots_saveable")
_POLICIES = {"full": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}


def remat_policy(remat: bool | str | None) -> str:
    """The remat setting as one of :data:`REMAT_POLICIES` (``True`` is ``"full"``, ``False``/``None`` ``"none"``).

    The strings ``"True"``/``"False"`` (what ``--config.remat=True`` gives) read as the bools did.

    >>> remat_policy(True), remat_policy("False"), remat_policy("dots_saveable")
    ('full', 'none', 'dots_saveable')
    """
    if remat is None or remat is False or str(remat).lower() == "false":
        return "none"
    if remat is True or str(remat).lower() == "true":
        return "full"
    if remat not in REMAT_POLICIES:
        raise ConfigError(
            f"remat={remat!r} is not a remat policy.",
            f"Use one of {', '.join(REMAT_POLICIES)} (True means 'full').",
        )
    return remat


class LayerStep(nn.Module):
    """One block as a scan step: ``(x, per_layer) -> (x, outputs)``, in the block's own scope.

    ``shared`` are the inputs every layer reads (masks, rotary tables); ``per_layer`` is this
    layer's own input (its KV cache slots) or ``None``. The block is made in this module's
    scope (``nn.share_scope``), so its parameters sit at ``{name}/...`` with no extra level.
    """

    layer_type: Any
    spec: Any
    deterministic: bool

    def setup(self):
        self.layer = self.layer_type(self.spec)
        nn.share_scope(self, self.layer)

    def __call__(self, x, shared, per_layer):
        if per_layer is None:
            return self.layer(x, *shared, deterministic=self.deterministic), None
        return self.layer(x, *shared, deterministic=self.deterministic, cache=per_layer)


def run_layers(layer_type, spec, name: str, x, shared: tuple, per_layer: Sequence | None = None, *,
               deterministic: bool):
    """Run ``spec.num_layers`` blocks of ``layer_type`` on ``x`` inside the calling compact module.

    ``layer_type(spec)(x, *shared, deterministic=..., cache=per_layer[i])`` is one block; it
    returns ``x``, or ``(x, output)`` when given a cache. Returns ``(x, outputs)`` where
    ``outputs`` is the list of the layers' outputs (``None`` without ``per_layer``).
    """
    policy = remat_policy(spec.remat)
    count = spec.num_layers
    if not spec.scan_layers:
        step = LayerStep if policy == "none" else nn.remat(LayerStep, policy=_POLICIES[policy])
        outputs = []
        for i in range(count):
            x, out = step(layer_type, spec, deterministic, name=f"{name}_{i}")(
                x, shared, None if per_layer is None else per_layer[i]
            )
            outputs.append(out)
        return x, (None if per_layer is None else outputs)
    step = LayerStep
    if policy != "none":
        # Inside a scan, remat need not stop XLA's common-subexpression elimination (flax's advice).
        step = nn.remat(LayerStep, policy=_POLICIES[policy], prevent_cse=False)
    scanned = nn.scan(
        step,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, 0),
        length=count,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    stacked = None if per_layer is None else jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
    x, outs = scanned(layer_type, spec, deterministic, name=name)(x, shared, stacked)
    if per_layer is None:
        return x, None
    return x, [jax.tree.map(lambda a: a[i], outs) for i in range(count)]


def layer_stacks(module_or_spec) -> tuple[str, ...]:
    """The stacked module paths of a model (for ``AdapterConfig(layer_stacks=...)``); ``()`` when unrolled.

    >>> import jaxlora.models as jm
    >>> layer_stacks(jm.build_module(jm.tiny_config("bert"), "sequence_classification", scan_layers=True))
    ('bert/encoder/layer',)
    """
    spec = getattr(module_or_spec, "spec", module_or_spec)
    return (spec.layer_stack,) if spec.scan_layers else ()


def stack_params(params: Mapping, module) -> dict:
    """A model's per-layer params in the layout its module runs (stacked when it scans its layers).

    >>> import jaxlora.models as jm
    >>> plain, params = jm.from_config(jm.tiny_config("bert"))
    >>> scanned = jm.build_module(jm.tiny_config("bert"), "sequence_classification", scan_layers=True)
    >>> stack_params(params, scanned)["bert"]["encoder"]["layer"]["intermediate"]["dense"]["kernel"].shape
    (2, 32, 37)
    """
    stacks = layer_stacks(module)
    return stack_layers(params, stacks) if stacks else dict(params)


def unstack_params(params: Mapping, module) -> dict:
    """A model's params per layer (``{name}_{i}/...``), whatever layout its module runs.

    >>> import jaxlora.models as jm
    >>> module, params = jm.from_config(jm.tiny_config("bert"), scan_layers=True)
    >>> sorted(unstack_params(params, module)["bert"]["encoder"])
    ['layer_0', 'layer_1']
    """
    stacks = layer_stacks(module)
    return unstack_layers(params, stacks) if stacks else dict(params)
