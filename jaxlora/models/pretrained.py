"""Hugging Face checkpoints in and out: :func:`from_pretrained` and :func:`save_pretrained`.

:func:`from_pretrained` resolves a name (:mod:`jaxlora.models.hub`), reads
``config.json`` into an :class:`~jaxlora.models.hf_config.HFConfig` (no
PyTorch), builds the module its family record names
(:mod:`jaxlora.models.build`) and fits the checkpoint's tensors to it
(:func:`~jaxlora.models.hf_io.match_state_dict`). Heads the checkpoint lacks
are drawn fresh, with a :class:`CheckpointWarning`; missing backbone weights
are an error. :func:`save_pretrained` writes a folder transformers'
``AutoModelFor...`` loads back.

>>> import tempfile, warnings
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore", CheckpointWarning)   # MiniLM ships no classifier: a fresh one
...     module, params = from_pretrained("minilm-l6", task="sequence_classification", num_labels=2)
>>> module.spec.family, module.spec.num_layers, params["classifier"]["kernel"].shape
('bert', 6, (384, 2))
>>> folder = save_pretrained(module, params, tempfile.mkdtemp())
>>> again, same = from_pretrained(folder)
>>> bool((same["classifier"]["kernel"] == params["classifier"]["kernel"]).all())
True
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlora.adapters.base import AdaptedKernel
from jaxlora.models import gguf, hf_config, hf_io, stack
from jaxlora.models.build import abstract_params, build_module, init_params, task_config
from jaxlora.models.family import get_family
from jaxlora.models.hub import resolve
from jaxlora.util.trees import flatten, unflatten

# transformers' class-name suffix per task, after the family's class stem (BertForSequenceClassification).
_TASK_SUFFIX = {
    "base": "Model",
    "sequence_classification": "ForSequenceClassification",
    "regression": "ForSequenceClassification",
    "causal_lm": "ForCausalLM",
}


class CheckpointWarning(UserWarning):
    """Keys of a checkpoint that were not used, or parameters that were freshly initialised."""


def from_pretrained(
    name_or_path: str,
    task: str | None = None,
    num_labels: int | None = None,
    dtype=jnp.float32,
    param_dtype=None,
    seed: int = 0,
    allow_missing: bool = False,
    config_overrides: Mapping[str, Any] | None = None,
    remat: bool | str = False,
    scan_layers: bool = False,
) -> tuple[nn.Module, dict]:
    """Load an HF checkpoint into a jaxlora model: ``(module, params)``.

    ``module.apply({"params": params}, input_ids, attention_mask, token_type_ids=None,
    position_ids=None, deterministic=True)`` gives the logits (``(batch, num_labels)``
    for classification/regression, ``(batch, length, vocab)`` for causal LM) or,
    for ``task="base"``, the backbone output.

    Args:
      name_or_path: a preset (:func:`~jaxlora.models.hub.presets`), a local folder with
        ``config.json`` and ``model.safetensors`` / sharded safetensors / ``pytorch_model.bin``,
        a ``.gguf`` file or a folder holding one (:mod:`jaxlora.models.gguf`), or a Hub id
        (needs network or the local HF cache; offline it fails at once, saying so).
      task: the family's default task when ``None`` (``"sequence_classification"`` for encoders,
        ``"causal_lm"`` for Llama); also ``"regression"`` (``num_labels=1``) or ``"base"``.
      num_labels: classifier size; ``None`` keeps the config's (2 unless the checkpoint says otherwise).
      dtype: computation dtype (``jnp.float32`` or ``jnp.bfloat16``); ``param_dtype`` defaults to it.
      seed: seed for heads the checkpoint lacks (the family's ``head_names``: classifier, score,
        lm_head, pooler), drawn as transformers initialises them; a warning lists them.
      allow_missing: also initialise missing *backbone* weights instead of raising.
      config_overrides: attributes set on the loaded config before building (e.g. dropout rates).
      remat: recompute every transformer layer in the backward pass (gradient checkpointing):
        ``"full"`` (``True``) or ``"dots_saveable"`` (keep the matmul outputs).
      scan_layers: run the layers as one ``nn.scan``; the checkpoint's per-layer tensors are
        stacked once, here, along a leading layer axis (:mod:`jaxlora.models.stack`).

    Raises:
      ValueError: a tensor's shape does not fit the config (names the tensor and both shapes), or
        backbone weights are missing (lists them).
      OSError: a Hub id that cannot be fetched offline.

    Unused checkpoint keys (e.g. a pretraining head) are reported in a :class:`CheckpointWarning`.

    >>> module, params = from_pretrained("minilm-l6", task="base", config_overrides={"hidden_dropout_prob": 0.0})
    >>> module.spec.hidden_dropout, sorted(params)
    (0.0, ['embeddings', 'encoder', 'pooler'])
    """
    folder = resolve(name_or_path)
    # A .gguf file (or a folder holding one) brings its config and dequantised weights in one read.
    checkpoint = gguf.read_checkpoint(folder) if gguf.gguf_file(folder) else None
    config = checkpoint.config if checkpoint else hf_config.read_config(folder)
    for key, value in (config_overrides or {}).items():
        setattr(config, key, value)
    family = get_family(config)
    task = task or family.default_task
    config = task_config(config, task, num_labels)
    param_dtype = param_dtype or dtype
    module = build_module(config, task, dtype=dtype, param_dtype=param_dtype, remat=remat, scan_layers=scan_layers)
    # Checkpoints name every layer: match them against the unrolled model's tree, stack at the end.
    unrolled = module.clone(spec=dataclasses.replace(module.spec, scan_layers=False))

    expected = {path: s.shape for path, s in flatten(abstract_params(unrolled)).items()}
    # A tied model has no lm_head of its own; the checkpoint's copy (if any) is the embedding again.
    ignore = ("lm_head.weight",) if getattr(module.spec, "tie_word_embeddings", False) else ()
    state_dict = checkpoint.state_dict if checkpoint else hf_io.read_state_dict(folder)
    report = hf_io.match_state_dict(family.name, state_dict, expected, ignore=ignore)

    missing_backbone = [p for p in report.missing if not any(name in family.head_names for name in p)]
    if missing_backbone and not allow_missing:
        raise ValueError(
            f"{len(missing_backbone)} backbone weights are missing from {folder}: "
            f"{['/'.join(p) for p in missing_backbone[:20]]}{' ...' if len(missing_backbone) > 20 else ''}. "
            "Check that the folder holds a checkpoint of this architecture, or pass allow_missing=True "
            "to initialise them randomly."
        )
    if report.missing:
        warnings.warn(
            f"Initialised {len(report.missing)} weights not in the checkpoint (seed={seed}): "
            f"{sorted(hf_io.hf_param_name(family.name, p) for p in report.missing)}",
            CheckpointWarning,
            stacklevel=2,
        )
    if report.unexpected:
        warnings.warn(
            f"Unused checkpoint keys ({len(report.unexpected)}): {report.unexpected[:20]}"
            f"{' ...' if len(report.unexpected) > 20 else ''}",
            CheckpointWarning,
            stacklevel=2,
        )
    missing = set(report.missing)
    fresh = flatten(init_params(unrolled, seed, only=missing.__contains__)) if missing else {}
    params = unflatten({path: (fresh[path] if path in fresh else report.params[path]) for path in expected})
    # Stacked before the device transfer, so the stacked layout is the only copy on the device.
    params = stack.stack_params(params, module)
    return module, jax.tree.map(lambda value: jnp.asarray(value, dtype=param_dtype), params)


def _contains_adapted(params: Mapping) -> bool:
    return any(
        _contains_adapted(v) if isinstance(v, Mapping) else isinstance(v, AdaptedKernel) for v in params.values()
    )


def save_pretrained(module: nn.Module, params: Mapping, folder: str) -> str:
    """Write ``config.json`` and ``model.safetensors`` that transformers' ``AutoModelFor...`` loads; returns ``folder``.

    ``params`` must be plain arrays (merge adapters first with ``jaxlora.merge``); a module that
    scans its layers has its stacked params written per layer, as the unrolled model's.
    ``config.architectures`` names the class of the family's model type and the task.

    >>> import json, os, tempfile
    >>> from jaxlora.models.build import from_config
    >>> from jaxlora.models.testing import tiny_config
    >>> folder = save_pretrained(*from_config(tiny_config("qwen2")), tempfile.mkdtemp())
    >>> json.load(open(os.path.join(folder, "config.json")))["architectures"]
    ['Qwen2ForCausalLM']
    """
    if _contains_adapted(params):
        raise ValueError(
            "params hold adapter nodes; merge them first (jaxlora.merge(frozen, adapter, cfg)) "
            "or save the adapter with the interop exporter."
        )
    spec = module.spec
    config = copy.deepcopy(module.config)
    hf_type = get_family(spec.family).hf_type(config.model_type)
    config.architectures = [hf_type.class_stem + _TASK_SUFFIX[spec.task]]
    config.dtype = jnp.dtype(spec.param_dtype).name
    os.makedirs(folder, exist_ok=True)
    config.save_pretrained(folder)
    hf_io.write_safetensors(hf_io.params_to_hf(spec.family, stack.unstack_params(params, module)), folder)
    return folder
