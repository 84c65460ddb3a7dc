"""The run a plan compiles: its training config, and its pieces on abstract leaves.

:func:`run_config` turns a plan's arguments (model, adapter, batch, remat, scanned layers, quantised frozen
weights, mesh) into the training config ``train.py`` would run, checked by the same validation.
:func:`abstract_run` builds from it what :func:`jaxlora.training.build` builds, with ``jax.ShapeDtypeStruct``
leaves instead of arrays: the module, the method's adapter (``method.initial`` under ``jax.eval_shape``), the
frozen weights (quantised as training quantises them), the optimiser, the mesh over the slice's devices and
every sharding (:func:`jaxlora.training.assembly.state_shardings`). Nothing is allocated and no checkpoint is read.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlora import data as jdata
from jaxlora import models, tasks
from jaxlora.errors import ConfigError
from jaxlora.models.hf_config import read_config
from jaxlora.models.known_configs import KNOWN_CONFIGS, known_config, known_names
from jaxlora.training import assembly, optim
from jaxlora.training import config as config_lib
from jaxlora.training import sharding as sh
from jaxlora.training.methods import method_from_config
from jaxlora.training.step import TrainState

__all__ = ["AbstractRun", "abstract_run", "model_config", "parse_batch", "run_config"]

_ENCODER_TYPES = ("bert", "roberta", "xlm-roberta")


def parse_batch(batch: str | tuple[int, int]) -> tuple[int, int]:
    """``"8x2048"`` -> ``(8, 2048)``: global batch rows and tokens per row.

    >>> parse_batch("8x2048"), parse_batch((1, 512))
    ((8, 2048), (1, 512))
    """
    if isinstance(batch, str):
        match = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", batch)
        if not match:
            raise ConfigError(f"batch={batch!r} is not ROWSxTOKENS.", "Write it like 8x2048 (8 sequences of 2048 tokens).")
        batch = (int(match.group(1)), int(match.group(2)))
    rows, length = (int(v) for v in batch)
    if rows < 1 or length < 2:
        raise ConfigError(f"batch={rows}x{length}: rows must be >= 1 and tokens >= 2.", "Write it like 8x2048.")
    return rows, length


def model_config(model: str, layers: int | None = None):
    """The HF config of ``model``: a known name (:mod:`jaxlora.models.known_configs`) or a folder / ``config.json``.

    >>> model_config("llama3-8b", layers=2).num_hidden_layers
    2
    """
    overrides = {} if layers is None else {"num_hidden_layers": int(layers)}
    if model in KNOWN_CONFIGS:
        return known_config(model, **overrides)
    path = os.path.expanduser(model)
    folder = os.path.dirname(path) if os.path.basename(path) == "config.json" else path
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ConfigError(f"model={model!r} is neither a known config ({', '.join(known_names())}) nor a config.json.",
                          "Pass one of the known names, or the path of a Hugging Face config.json (or its folder).")
    config = read_config(folder)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _has_field(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if part not in node:
            return False
        node = node[part]
    return True


def run_config(model: str, hf_config, *, variant: str = "lora", rank: int = 16, targets: Any = "all-linear",
               batch: tuple[int, int] = (8, 2048), quant: str | None = None, remat: str | None = None,
               scan: bool = False, mesh: Mapping[str, int] | None = None, dtype: str = "bfloat16",
               quant_block_size: int = 64):
    """The :func:`jaxlora.training.default_config` of the run a plan describes (the fields ``train.py`` reads).

    Decoders train the ``causal_lm`` task on ``batch`` rows of that many tokens, encoders SST-2's
    classification. ``mesh`` holds ``data``/``fsdp``/``tensor`` sizes (default: fsdp over every chip).
    ``remat``, ``scan`` and ``quant`` set ``config.remat``, ``config.scan_layers`` and
    ``config.frozen_quant``; one this jaxlora has no field for is refused.

    >>> config = run_config("llama3-8b", model_config("llama3-8b"), batch=(8, 2048))
    >>> config.task, config.causal_lm.max_length, config.lora.targets, config.mesh.fsdp
    ('causal_lm', 2048, ('all-linear',), -1)
    """
    config = config_lib.default_config()
    rows, length = batch
    config.model = model
    config.dtype = dtype
    if hf_config.model_type in _ENCODER_TYPES:
        config.task, config.max_length = "sst2", length
        config.min_bucket = min(int(config.min_bucket), length)
    else:
        config.task = "causal_lm"
        config.causal_lm.max_length, config.causal_lm.min_bucket = length, min(16, length)
        config.lora.trainable = ()
    config.batch_size = config.eval_batch_size = rows
    config.optimizer.learning_rate = 1e-4
    if variant == config_lib.FULL_VARIANT:
        config.lora.variant = variant
    else:
        config.lora.variant, config.lora.rank, config.lora.alpha = variant, int(rank), float(2 * rank)
        config.lora.targets = (targets,) if isinstance(targets, str) else tuple(targets)  # ("all-linear",) means it
    mesh = dict(mesh or {"data": 1, "fsdp": -1, "tensor": 1})
    for axis in ("data", "fsdp", "tensor"):
        config.mesh[axis] = int(mesh.get(axis, 1))
    wanted = {"scan_layers": (bool(scan), "--scan"), "frozen_quant": (quant or None, "--quant")}
    for field, (value, flag) in wanted.items():
        if _has_field(config, field):
            if value:
                config[field] = value
                if field == "frozen_quant":
                    config.frozen_quant_block_size = int(quant_block_size)
        elif value:
            raise ConfigError(f"config.{field} is not a field of this jaxlora's training config, so {flag} cannot "
                              "be planned yet.", "Update jaxlora (scanned layers and quantised frozen weights are "
                              "issue 14's), or drop the flag.")
    if remat not in (None, "", "none"):
        config.remat = True if isinstance(config.remat, bool) else str(remat)  # a bool before remat policies
    return config


def _validated(config) -> None:
    # The mesh is checked against the slice's devices, not this process's: validate a copy with a mesh that fits here.
    probe = config.copy_and_resolve_references()
    probe.mesh.data, probe.mesh.fsdp, probe.mesh.tensor = -1, 1, 1
    config_lib.validate(probe)


# --------------------------------------------------------------------------------------------
# The abstract run


class AbstractRun(NamedTuple):
    """A run's pieces on abstract leaves: what :func:`jaxlora.training.build` gives, without data or arrays."""

    config: Any
    task: Any
    method: Any
    module: Any
    frozen: Any  # ShapeDtypeStructs
    state: TrainState  # ShapeDtypeStructs
    batch: dict  # ShapeDtypeStructs
    optimizer: Any
    mesh: jax.sharding.Mesh
    shardings: Any
    model_params: int  # the model's numbers, whether frozen, quantized or trained in full


def _float32(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), tree)


def _abstract_batch(task, rows: int, length: int) -> dict:
    # A real batch of the task's schema (jaxlora.data.make_batch), full length, then only its shapes.
    tokens = np.ones(rows * length, np.int32)
    data = jdata.TokenizedDataset(tokens, np.ones(rows * length, np.int8), np.arange(rows + 1) * length,
                                  np.zeros(rows, np.int32), np.arange(rows), pad_id=0, max_length=length)
    batch = jdata.make_batch(data, np.arange(rows), rows, buckets=(length,))
    return {k: jax.ShapeDtypeStruct(batch[k].shape, batch[k].dtype) for k in task.device_keys}


def _quantized(config, frozen, adapter, layer_stacks=()):
    # assembly.quantized_frozen, as build applies it, on abstract leaves.
    if not config.get("frozen_quant"):
        return frozen
    return jax.eval_shape(lambda tree: assembly.quantized_frozen(config, tree, adapter, layer_stacks), frozen)


def abstract_run(config, hf_config, devices) -> AbstractRun:
    """The run of ``config`` on ``devices`` with abstract params (the model config is ``hf_config``)."""
    _validated(config)
    task = tasks.from_config(config)
    head = task.model_head()
    task_name = head["task"]
    model_cfg = models.build.task_config(hf_config, task_name, head.get("num_labels"))
    module = models.build_module(model_cfg, task_name, **assembly.model_options(config))
    frozen = models.abstract_params(module)
    model_params = int(sum(math.prod(x.shape) for x in jax.tree.leaves(frozen)))
    method = method_from_config(config, module)  # a scanned model's adapter config names its layer stacks
    adapter = jax.eval_shape(lambda key: method.initial(key, frozen), jax.random.key(0))
    frozen = _quantized(config, frozen, adapter, models.layer_stacks(module))
    trainable, fixed = _float32(adapter.trainable), _float32(adapter.fixed)
    spec = optim.optimizer_spec(config, config_lib.learning_rate(config, task))
    optimizer = optim.make_optimizer(spec, 1000, models.layer_stacks(module))
    try:
        mesh = sh.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
        assembly._check_batch_sizes(config, mesh)
    except ValueError as err:
        raise ConfigError(f"The mesh does not suit the slice: {err}",
                          f"Choose data x fsdp x tensor = {len(devices)} chips, with the batch rows a multiple of data x fsdp.") from err
    shardings = assembly.state_shardings(config, mesh, module, method, frozen, trainable, fixed, optimizer)
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), trainable=trainable, fixed=fixed,
        opt_state=jax.eval_shape(optimizer.init, trainable),
        rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
    )
    rows, length = config.batch_size, (config.causal_lm.max_length if config.task == "causal_lm" else config.max_length)
    batch = _abstract_batch(task, int(rows), int(length))
    # The step's frozen argument, as training passes it: none for full fine-tuning (all of it is trained).
    frozen = method.device_frozen(frozen)
    return AbstractRun(config, task, method, module, frozen, state, batch, optimizer, mesh, shardings, model_params)
