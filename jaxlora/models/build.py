"""Models without a checkpoint: the module for a config and task, and parameters drawn as transformers draws them.

:func:`build_module` asks the config's family record (:mod:`jaxlora.models.family`)
for its Linen module; :func:`init_params` draws every parameter straight in numpy
(normal with ``initializer_range``, zero biases, unit norms, zero padding rows),
so no XLA compile is spent on initialisation and each leaf's draw depends only on
its path and the seed. :func:`abstract_params` and :func:`logical_axes` describe
the parameter tree without allocating it.

Every module has ``module.config`` (the model config, with
``num_labels``/``problem_type`` set for the task) and ``module.spec`` (the
hashable numbers the module runs on, including ``spec.family``).

>>> import jax.numpy as jnp
>>> from jaxlora.models.testing import tiny_config
>>> module, params = from_config(tiny_config("bert"), task="sequence_classification", num_labels=3)
>>> ids = jnp.array([[101, 7, 8, 102], [101, 9, 102, 0]])
>>> module.apply({"params": params}, ids, (ids != 0).astype(jnp.int32)).shape
(2, 3)
"""

from __future__ import annotations

import copy
import dataclasses
import zlib
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxlora.adapters.base import AdaptedKernel
from jaxlora.models import stack
from jaxlora.models.family import get_family
from jaxlora.util.trees import Path, flatten, unflatten


def task_config(config, task: str, num_labels: int | None):
    """A copy of ``config`` with the head settings transformers would store for ``task``.

    >>> from jaxlora.models.testing import tiny_config
    >>> config = task_config(tiny_config("bert"), "regression", None)
    >>> config.num_labels, config.problem_type
    (1, 'regression')
    """
    config = copy.deepcopy(config)
    if task == "regression":
        config.num_labels = 1 if num_labels is None else num_labels
        config.problem_type = "regression"
    elif task == "sequence_classification":
        if num_labels is not None:
            config.num_labels = num_labels
        if config.num_labels == 1:
            config.problem_type = "regression"
    return config


def build_module(config, task: str, dtype=jnp.float32, param_dtype=None, remat: bool | str = False,
                 scan_layers: bool = False) -> nn.Module:
    """The Linen module for a config and task, without parameters (the family record's ``build``).

    ``remat`` recomputes each transformer layer in the backward pass (gradient
    checkpointing): ``"full"`` (or ``True``) or ``"dots_saveable"``; the parameters are
    the same either way. ``scan_layers=True`` runs the layers as one ``nn.scan`` over
    stacked parameters (:mod:`jaxlora.models.stack`).

    >>> from jaxlora.models.testing import tiny_config
    >>> module = build_module(tiny_config("llama"), "causal_lm")
    >>> module.spec.family, module.spec.task
    ('llama', 'causal_lm')
    """
    family = get_family(config)
    return family.build(config, family.name, task, dtype=dtype, param_dtype=param_dtype or dtype, remat=remat,
                        scan_layers=scan_layers)


def from_config(
    config,
    task: str | None = None,
    num_labels: int | None = None,
    seed: int = 0,
    dtype=jnp.float32,
    param_dtype=None,
    remat: bool | str = False,
    scan_layers: bool = False,
) -> tuple[nn.Module, dict]:
    """A randomly initialised model: ``(module, params)``.

    Args:
      config: a transformers config or an :class:`~jaxlora.models.hf_config.HFConfig` of a
        registered family (BERT, RoBERTa, XLM-R, Llama, Qwen2, or one added with
        :func:`~jaxlora.models.family.register_family`).
      task: ``"sequence_classification"`` (default for encoders), ``"regression"``,
        ``"causal_lm"`` (default for Llama) or ``"base"`` (backbone only).
      num_labels: head size; ``None`` keeps ``config.num_labels`` (1 for regression).
      seed: seed of the random draws.
      dtype: computation dtype; ``param_dtype`` defaults to it.
      remat: recompute every transformer layer in the backward pass (gradient
        checkpointing): less activation memory for about one more forward pass.
        ``"full"`` (``True``) or ``"dots_saveable"`` (keep the matmul outputs).
      scan_layers: run the layers as one ``nn.scan``; the params are the unrolled
        model's (same seed, same numbers) stacked along a leading layer axis.

    >>> from jaxlora.models.testing import tiny_config
    >>> module, params = from_config(tiny_config("llama"))
    >>> module.spec.task, params["lm_head"]["kernel"].shape
    ('causal_lm', (32, 99))
    """
    task = task or get_family(config).default_task
    config = task_config(config, task, num_labels)
    module = build_module(config, task, dtype=dtype, param_dtype=param_dtype or dtype, remat=remat,
                          scan_layers=scan_layers)
    return module, init_params(module, seed)


def _abstract_boxed(module: nn.Module):
    ids = jnp.zeros((1, 2), jnp.int32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, jnp.ones_like(ids)))
    return shapes["params"]


def abstract_params(module: nn.Module) -> dict:
    """The params tree as ``jax.ShapeDtypeStruct`` leaves (no memory, no compile).

    >>> from jaxlora.models.testing import tiny_config
    >>> abstract_params(build_module(tiny_config("bert"), "sequence_classification"))["classifier"]["kernel"].shape
    (32, 2)
    """
    return nn.unbox(_abstract_boxed(module))


def logical_axes(module: nn.Module, params: Mapping | None = None) -> dict:
    """Logical axis names of every parameter, as a tree of ``PartitionSpec`` matching the params.

    Names: ``"vocab"``, ``"embed"``, ``"heads"`` (query/key/value outputs,
    attention-output inputs, flattened ``heads*head_dim``), ``"kv"`` (grouped
    key/value outputs), ``"mlp"``, ``"labels"`` and ``None``. Map them onto a
    mesh with flax's logical rules, e.g.
    ``nn.logical_to_mesh_sharding(logical_axes(module, params), mesh, rules)`` with
    ``rules = (("embed", "fsdp"), ("heads", "tensor"), ("kv", "tensor"), ("mlp", "tensor"))``.

    ``tuple(spec)`` gives the plain names. When ``params`` is given, its keys
    must be the module's (a mismatch is an error naming the differing paths).

    >>> from jaxlora.models.testing import tiny_config
    >>> axes = logical_axes(build_module(tiny_config("llama"), "causal_lm"))
    >>> tuple(axes["model"]["layers_0"]["self_attn"]["k_proj"]["kernel"])
    ('embed', 'kv')
    """
    boxed = _abstract_boxed(module)

    def names(leaf):
        if isinstance(leaf, nn.Partitioned):
            return PartitionSpec(*leaf.names)
        return PartitionSpec(*([None] * len(leaf.shape)))

    axes = jax.tree.map(names, boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    if params is not None:
        have = set(flatten(_plain_tree(params)))
        want = set(flatten(axes))
        if have != want:
            raise ValueError(
                "params do not match the module: "
                f"missing {sorted('/'.join(p) for p in want - have)[:10]}, "
                f"extra {sorted('/'.join(p) for p in have - want)[:10]}."
            )
    return axes


def _plain_tree(params: Mapping) -> dict:
    """Nested dict with AdaptedKernel nodes replaced by their kernel, for structure checks."""
    return {
        k: (_plain_tree(v) if isinstance(v, Mapping) else (v.kernel if isinstance(v, AdaptedKernel) else v))
        for k, v in params.items()
    }


def _padding_rows(spec) -> dict[str, int]:
    """Embedding tables whose padding row transformers zeroes at init (the family record's)."""
    pad = spec.pad_token_id
    if pad is None or not 0 <= pad < spec.vocab_size:
        return {}
    return {name: pad for name in get_family(spec.family).padded_embeddings}


def _init_leaf(path: Path, shape, dtype, spec, seed: int) -> jax.Array:
    leaf = path[-1]
    if leaf == "bias":
        value = np.zeros(shape, np.float32)
    elif leaf == "scale":
        value = np.ones(shape, np.float32)
    else:
        # One generator per leaf, keyed by its path: a leaf's draw does not depend on the others.
        rng = np.random.default_rng([seed, zlib.crc32("/".join(path).encode())])
        value = rng.normal(0.0, spec.initializer_range, size=shape).astype(np.float32)
        pad_row = _padding_rows(spec).get(path[-2]) if leaf == "embedding" else None
        if pad_row is not None:
            value[pad_row] = 0.0
    return jnp.asarray(value, dtype=dtype)


def init_params(module: nn.Module, seed: int = 0, only: Callable[[Path], bool] | None = None) -> dict:
    """Fresh params for ``module`` drawn like transformers' ``_init_weights``.

    ``only`` restricts the draw to the paths it accepts (how missing heads are filled). A module
    that scans its layers gets the unrolled model's draws, stacked (``only`` sees per-layer paths).

    >>> from jaxlora.models.testing import tiny_config
    >>> module = build_module(tiny_config("bert"), "sequence_classification")
    >>> params = init_params(module, seed=0, only=lambda path: path[0] == "classifier")
    >>> {name: leaf.shape for name, leaf in params["classifier"].items()}
    {'bias': (2,), 'kernel': (32, 2)}
    """
    if module.spec.scan_layers:
        unrolled = module.clone(spec=dataclasses.replace(module.spec, scan_layers=False))
        return stack.stack_params(init_params(unrolled, seed, only), module)
    flat = flatten(abstract_params(module))
    return unflatten(
        {
            path: _init_leaf(path, s.shape, s.dtype, module.spec, seed)
            for path, s in flat.items()
            if only is None or only(path)
        }
    )
