"""Run assembly: from a validated config to everything the first step needs, in a :class:`Run`.

:func:`build` is the only place that reads the config's model, method, task, optimiser and mesh
fields together:

1. the task (built once, :func:`jaxlora.tasks.from_config`) loads its data with the model's tokenizer;
2. the model is loaded with the head the task asks for (``task.model_head()``);
3. the training method (:func:`~jaxlora.training.methods.method_from_config`, or the PEFT folder
   of ``config.init_from_peft``) gives the initial adapter;
   with ``config.frozen_quant``, the frozen kernels are then quantized (:func:`jaxlora.quantize`);
4. the optimiser follows the task's epochs and the config's schedule;
5. the mesh places the frozen params by logical axes, the adapter factors like the weights they
   adapt, the batches over ``(data, fsdp)`` (:mod:`~jaxlora.training.sharding`), and the initial state goes onto it.

``build`` loads a model and a dataset, so it has no doctest here; ``tests/training/test_configs.py``
builds and trains every config file on a tiny BERT, and ``benchmarks/train_throughput.py`` times
``run = build(config)`` followed by its bare step.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxlora
from jaxlora import models, tasks
from jaxlora.adapters.config import AdapterConfig
from jaxlora.adapters.core import Adapter
from jaxlora.adapters.stacks import stack_layers, unstack_layers
from jaxlora.adapters.targets import flatten, join
from jaxlora.errors import ConfigError
from jaxlora.nn.quantize import quantized_paths
from jaxlora.util import listing
from jaxlora.training import config as config_lib
from jaxlora.training import optim
from jaxlora.training import sharding as sh
from jaxlora.training.methods import LowRank, TrainingMethod, method_from_config
from jaxlora.training.step import StateShardings, TrainState

__all__ = ["Run", "build", "model_options", "quantized_frozen", "state_shardings"]

log = logging.getLogger("jaxlora.training")


class Run(NamedTuple):
    """Everything derived from a config before the first step (see :func:`build`)."""

    config: Any
    task: tasks.Task
    method: TrainingMethod
    module: Any
    frozen: Any  # on device (empty for full fine-tuning)
    frozen_host: Any  # the frozen params as loaded, quantized with config.frozen_quant (for exports)
    adapter_config: AdapterConfig | None  # method.adapter_config: None for full fine-tuning
    train_data: Any
    validation_data: Any
    test_data: Any
    optimizer: optax.GradientTransformation
    optimizer_spec: optim.OptimizerSpec
    steps_per_epoch: int
    total_steps: int
    mesh: jax.sharding.Mesh
    shardings: StateShardings
    initial_state: TrainState  # on device
    param_counts: jaxlora.ParamCount
    metric_name: str


def model_options(config) -> dict:
    """The keyword arguments of the model builders that come from the config (``dtype``, ``remat``, ...).

    Shared by :func:`build` (``models.from_pretrained``) and ``jaxlora.plan`` (``models.build_module``
    on abstract params), so a plan compiles the module a run trains.

    >>> from jaxlora.training.config import default_config
    >>> config = default_config()
    >>> config.dtype = "bfloat16"
    >>> model_options(config)["dtype"].__name__, model_options(config)["remat"], model_options(config)["scan_layers"]
    ('bfloat16', 'none', False)
    """
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    return {"dtype": dtype, "remat": config.remat, "scan_layers": bool(config.scan_layers)}


def _load_model(config, task: tasks.Task):
    overrides = {}
    if config.model_dropout is not None:  # None keeps the checkpoint's dropout
        overrides = {"hidden_dropout_prob": float(config.model_dropout),
                     "attention_probs_dropout_prob": float(config.model_dropout)}
    with warnings.catch_warnings():
        # A fresh task head is expected (pretrained checkpoints have none): not worth a warning here.
        warnings.filterwarnings("ignore", message="Initialised .* weights not in the checkpoint")
        return models.from_pretrained(config.model, **task.model_head(), seed=int(config.seed),
                                      config_overrides=overrides, **model_options(config))


def _host_copy(tree):
    # Fresh float32 host buffers: trained leaves must never alias the frozen arrays they start from
    # (the state is donated to the step, which would free the frozen copy too).
    return jax.tree.map(lambda x: np.array(x, dtype=np.float32), tree)


def _initial_method(config, module, frozen_host) -> tuple[TrainingMethod, Adapter]:
    if config.init_from_peft:
        method, adapter = LowRank.from_peft(config.init_from_peft, module, frozen_host)
        log.info("Starting from the PEFT adapter in %s (its config replaces config.lora): %s",
                 config.init_from_peft, method.config)
        return method, adapter
    method = method_from_config(config, module)
    return method, method.initial(jax.random.fold_in(jax.random.key(int(config.seed)), 1), frozen_host)


def quantized_frozen(config, frozen, adapter: Adapter, layer_stacks: Sequence[str] = ()):
    """``config.frozen_quant``: the frozen kernels as :func:`jaxlora.quantize` nodes (QLoRA); ``frozen`` when unset.

    Leaves trained in full (the task head) keep their dtype: they are copied into the adapter and trained.
    So do the output heads that ``all-linear`` leaves alone (``config.lora.exclude``: the LM head), as
    bitsandbytes' QLoRA keeps the output layer: dequantized, a 128k-vocabulary head is a 1-2 GiB copy
    that the backward pass needs again, outside the remat'd layers (docs/SCALE.md, row 4h: Llama-3-8B
    on one v5e chip needs 13.48 GiB with the head in bf16, 15.69 GiB with it in nf4).
    Traceable: ``jaxlora.plan`` runs it under ``jax.eval_shape`` on abstract params. A scanned model's
    stacks (``models.layer_stacks(module)``) are quantized layer by layer and stacked again, so every
    array of a stacked node has the layer axis and its metadata is one layer's.
    """
    if config.frozen_quant is None:
        return frozen
    adapter_config = config_lib.adapter_config(config)
    heads = tuple(adapter_config.exclude) if adapter_config is not None else ()
    trained_in_full = tuple(join(path) for path in flatten(adapter.trainable.get("full", {})))
    keep = trained_in_full + heads
    try:
        if layer_stacks:
            per_layer = jaxlora.quantize(unstack_layers(frozen, layer_stacks), config.frozen_quant,
                                         int(config.frozen_quant_block_size), skip=keep)
            return stack_layers(per_layer, layer_stacks)
        return jaxlora.quantize(frozen, config.frozen_quant, int(config.frozen_quant_block_size), skip=keep)
    except ValueError as err:
        raise ConfigError(
            f"config.frozen_quant={config.frozen_quant!r} cannot quantize this model: {err}",
            "Set config.frozen_quant_block_size to a divisor of every kernel's last axis, or leave frozen_quant unset.",
        ) from None


def _quantized(config, frozen_host, adapter: Adapter, layer_stacks: Sequence[str]):
    """:func:`quantized_frozen` on the host, logged."""
    quantized = quantized_frozen(config, frozen_host, adapter, layer_stacks)
    if quantized is frozen_host:
        return frozen_host
    paths = quantized_paths(quantized)
    log.info("Frozen kernels stored as %s in blocks of %d: %d kernels (%s)", config.frozen_quant,
             int(config.frozen_quant_block_size), len(paths), listing(paths, limit=6))
    return jax.device_get(quantized)


def _check_batch_sizes(config, mesh: jax.sharding.Mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % shards:
            raise ValueError(
                f"config.{name}={config[name]} is not divisible by the {shards} batch shards of the mesh "
                f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}): use a multiple of {shards}."
            )


def state_shardings(config, mesh, module, method: TrainingMethod, frozen, trainable, fixed,
                    optimizer) -> StateShardings:
    """Every NamedSharding of a run, from its frozen params and float32 adapter trees.

    The trees may hold arrays or ``jax.ShapeDtypeStruct`` leaves: only shapes are read and nothing
    is placed, so ``jaxlora.plan`` gets the shardings of a run it never allocates.
    """
    full_sh = sh.frozen_shardings(module, frozen, mesh)
    # The factors are placed like the weights they adapt (frozen= and config=); full fine-tuning has no
    # adapter config, and its trainable leaves keep the frozen layout of their paths.
    trainable_sh, fixed_sh = sh.adapter_shardings(
        trainable, fixed, mesh, full_sh, int(config.mesh.adapter_fsdp_min_size),
        frozen=frozen, config=method.adapter_config,
    )
    rep = sh.replicated(mesh)
    opt_shapes = jax.eval_shape(optimizer.init, trainable)
    # A scanned model's optimiser keeps its moments stacked (optim.over_layer_stacks): they are placed
    # like the factors they follow, with the layer axis unsplit. Unscanned, the layout is the tree itself.
    stacks = models.layer_stacks(module)
    stack = lambda tree: optim.stacked_lowrank(tree, stacks)[0]  # noqa: E731
    opt_sh = sh.like_params(opt_shapes, jax.eval_shape(stack, trainable), sh.stacked_like(trainable_sh, stack), mesh)
    state_sh = TrainState(step=rep, trainable=trainable_sh, fixed=fixed_sh, opt_state=opt_sh, rng=rep)
    # The whole frozen tree, or nothing (full fine-tuning: the model lives in the trainable state).
    frozen_sh = full_sh if method.device_frozen(frozen) else {}
    return StateShardings(state=state_sh, frozen=frozen_sh, batch=sh.batch_sharding(mesh), replicated=rep)


def _placed_state(config, mesh, module, method: TrainingMethod, frozen_host, adapter: Adapter,
                  optimizer) -> tuple[Any, StateShardings, TrainState]:
    """The frozen params on device, every sharding of the run, and the initial state on device."""
    trainable_host = _host_copy(adapter.trainable)
    fixed_host = _host_copy(adapter.fixed)
    shardings = state_shardings(config, mesh, module, method, frozen_host, trainable_host, fixed_host, optimizer)
    trainable_sh, fixed_sh, opt_sh = (shardings.state.trainable, shardings.state.fixed, shardings.state.opt_state)
    rep, frozen_sh = shardings.replicated, shardings.frozen
    frozen = sh.put_tree(method.device_frozen(frozen_host), frozen_sh) if frozen_sh else {}

    trainable = sh.put_tree(trainable_host, trainable_sh)
    init_opt = jax.jit(optimizer.init, in_shardings=(trainable_sh,), out_shardings=opt_sh)
    dropout_key = jax.random.fold_in(jax.random.key(int(config.seed)), 2)
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), rep),
        trainable=trainable,
        fixed=sh.put_tree(fixed_host, fixed_sh),
        opt_state=init_opt(trainable),
        rng=jax.device_put(jax.random.key_data(dropout_key), rep),
    )
    return frozen, shardings, state


def build(config) -> Run:
    """Validate ``config`` and build everything a run needs (data, model, adapter, optimiser, shardings).

    ``run.total_steps``, ``run.param_counts.trainable`` and ``run.task.metric_name`` are what a
    notebook usually reads first; ``run.initial_state`` is on the devices, ready for the step.
    """
    config_lib.validate(config)
    task = tasks.from_config(config)
    data = task.load(models.load_tokenizer(config.tokenizer or config.model))
    module, frozen_host = _load_model(config, task)
    # Host copies: sharded device copies are made below; keeping a whole copy on one device would waste it.
    frozen_host = jax.device_get(frozen_host)
    method, adapter = _initial_method(config, module, frozen_host)
    frozen_host = _quantized(config, frozen_host, adapter, models.layer_stacks(module))

    spe = task.steps_per_epoch(data.train, int(config.batch_size))
    total = spe * config_lib.num_epochs(config, task)
    if config.max_steps > 0:
        total = min(total, int(config.max_steps))
    spec = optim.optimizer_spec(config, config_lib.learning_rate(config, task))
    optimizer = optim.make_optimizer(spec, total, models.layer_stacks(module))

    mesh = sh.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    _check_batch_sizes(config, mesh)
    frozen, shardings, state = _placed_state(config, mesh, module, method, frozen_host, adapter, optimizer)
    return Run(
        config=config, task=task, method=method, module=module, frozen=frozen, frozen_host=frozen_host,
        adapter_config=method.adapter_config, train_data=data.train,
        validation_data=data.validation, test_data=data.test, optimizer=optimizer, optimizer_spec=spec,
        steps_per_epoch=spe, total_steps=total, mesh=mesh, shardings=shardings, initial_state=state,
        param_counts=method.counts(adapter, frozen_host), metric_name=task.metric_name,
    )
