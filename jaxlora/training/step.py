"""The jitted pieces of a run: the train step, the eval step, and evaluation over a whole split.

What the step sees. The frozen params are an argument of the jitted step (placed once, never
donated, never differentiated); the state ``TrainState(step, trainable, fixed, opt_state, rng)`` is
donated and returned updated. The loss is a function of ``trainable`` alone::

    params = method.params(frozen, trainable, fixed)     # e.g. jaxlora.apply(..., mode="factored")
    loss   = task.loss(module.apply({"params": params}, **inputs), batch)

so ``jax.grad`` gives gradients of the method's trainable leaves (adapter and head) only; optimiser
moments exist for those leaves only. The model's inputs are the batch arrays its family names
(``jaxlora.models.get_family(module).input_names``). Dropout keys are ``fold_in(rng, step)``, so a
resumed run draws the same masks as an uninterrupted one.

A tiny BERT, LoRA on it, SST-2's loss, one device:

>>> from jaxlora import models
>>> module, frozen = models.from_config(models.tiny_config("bert"), task="sequence_classification")
>>> method, task = LowRank(jaxlora.AdapterConfig("lora", rank=2)), tasks.Glue(jdata.get_task("sst2"))
>>> adapter, tx = method.initial(jax.random.key(0), frozen), optax.adam(1e-2)
>>> state = TrainState(jnp.int32(0), adapter.trainable, adapter.fixed, tx.init(adapter.trainable),
...                    jax.random.key_data(jax.random.key(1)))
>>> mesh = sh.make_mesh()
>>> rep = sh.replicated(mesh)
>>> shardings = StateShardings(TrainState(rep, rep, rep, rep, rep), frozen=rep, batch=sh.batch_sharding(mesh),
...                            replicated=rep)
>>> data = jdata.TokenizedDataset(np.arange(1, 21, dtype=np.int32), np.zeros(20, np.int8), np.array([0, 4, 12, 20]),
...                               np.array([1, 0, 1], np.int32), np.arange(3), pad_id=0, max_length=8)
>>> batch, _ = next(task.train_batches(data, jdata.LoaderState(seed=0), batch_size=4))
>>> step = make_train_step(module, method, tx, task, shardings)
>>> state, metrics = step(state, frozen, sh.put_batch(batch, shardings.batch, task.device_keys))  # frozen: an argument
>>> int(state.step), bool(metrics["params_finite"])
(1, True)
>>> eval_step = make_eval_step(module, method, shardings, task)
>>> logits = evaluate(eval_step, state, frozen, data, 4, shardings.batch, task)   # in data's order
>>> logits.shape, sorted(task.metrics(logits, data))
((3, 2), ['accuracy'])
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxlora
from jaxlora import data as jdata
from jaxlora import models, tasks
from jaxlora.adapters.config import AdapterConfig
from jaxlora.training import optim
from jaxlora.training import sharding as sh
from jaxlora.training.methods import LowRank, TrainingMethod, as_method

__all__ = ["TrainState", "StateShardings", "model_params", "forward", "make_train_step", "make_eval_step",
           "evaluate"]


class TrainState(NamedTuple):
    """Everything a step changes (and a checkpoint saves): never the frozen params."""

    step: jax.Array  # int32 scalar: steps done
    trainable: dict  # {"lowrank": ..., "full": ...}
    fixed: dict  # frozen parts of the adapter (B-only's random a)
    opt_state: Any
    rng: jax.Array  # uint32 key data; step n's dropout key is fold_in(rng, n)


class StateShardings(NamedTuple):
    """NamedShardings of a run: the state, the frozen params, batches, replicated scalars."""

    state: TrainState
    frozen: Any
    batch: jax.sharding.NamedSharding
    replicated: jax.sharding.NamedSharding


def model_params(frozen: Mapping, trainable: Mapping, fixed: Mapping,
                 method: TrainingMethod | AdapterConfig | None) -> Mapping:
    """The params the model runs on under ``method`` (an :class:`AdapterConfig` means :class:`LowRank`).

    >>> import numpy as np
    >>> frozen = {"query": {"kernel": np.ones((2, 2), np.float32)}}
    >>> cfg = jaxlora.AdapterConfig("lora", rank=1, targets=("query",))
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    >>> model_params(frozen, adapter.trainable, adapter.fixed, cfg)["query"]["kernel"].shape
    (2, 2)
    """
    return as_method(method).params(frozen, trainable, fixed)


def forward(module, params: Mapping, batch: Mapping, deterministic: bool, dropout_key: jax.Array | None = None):
    """``module.apply`` on the batch arrays the model's family takes (see the module docstring).

    An input the batch does not carry (a task without segment ids) is left to the model's default.
    """
    inputs = {name: batch[name] for name in models.get_family(module).input_names if name in batch}
    rngs = None if deterministic else {"dropout": dropout_key}
    return module.apply({"params": params}, **inputs, deterministic=deterministic, rngs=rngs)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [jnp.bool_(True)]))


def make_train_step(module, method: TrainingMethod | AdapterConfig | None, optimizer: optax.GradientTransformation,
                    task: tasks.Task, shardings: StateShardings) -> Callable:
    """``step(state, frozen, batch) -> (state, {"loss", "grad_norm", "params_finite"})``, jitted, explicitly sharded.

    The state is donated (updated in place); ``frozen`` is not. ``task.loss`` is the loss. For a scanned
    ``module``, the optimiser's state is in the stacked layout: build it with
    ``make_optimizer(spec, steps, models.layer_stacks(module))``, as :func:`jaxlora.training.build` does.

    The module docstring runs one; in a run, ``make_train_step(run.module, run.method, run.optimizer,
    run.task, run.shardings)`` is the loop's step (``run`` from :func:`jaxlora.training.build`).
    """
    method = as_method(method)
    stacks = models.layer_stacks(module)

    def step(state: TrainState, frozen, batch):
        dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_of(trainable):
            params = method.params(frozen, trainable, state.fixed)
            outputs = forward(module, params, batch, deterministic=False, dropout_key=dropout_key)
            return task.loss(outputs, batch)

        loss, grads = jax.value_and_grad(loss_of)(state.trainable)
        # A scanned model's per-layer adapter is updated stacked (optim.over_layer_stacks): the update, the
        # norm and the finite check are then one program whatever the depth, not one per layer's factor.
        grads, _ = optim.stacked_lowrank(grads, stacks)
        trainable, stacked = optim.stacked_lowrank(state.trainable, stacks)
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        # One pass over the (small) trainable tree, so a non-finite update is caught before it is saved.
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "params_finite": _all_finite(trainable)}
        if stacked:
            trainable = optim.unstacked_lowrank(trainable, stacks)
        return state._replace(step=state.step + 1, trainable=trainable, opt_state=opt_state), metrics

    rep = shardings.replicated
    return jax.jit(
        step,
        in_shardings=(shardings.state, shardings.frozen, shardings.batch),
        out_shardings=(shardings.state, {"loss": rep, "grad_norm": rep, "params_finite": rep}),
        donate_argnums=(0,),
    )


def make_eval_step(module, method: TrainingMethod | AdapterConfig | None, shardings: StateShardings,
                   task: tasks.Task | None = None) -> Callable:
    """``eval_step(trainable, fixed, frozen, batch) -> outputs``, replicated.

    The outputs are ``task.eval_outputs`` of the model's (logits for GLUE), or the model's float32
    outputs when no task is given.

    The module docstring runs one over a tiny split, through :func:`evaluate`.
    """
    method = as_method(method)

    def eval_step(trainable, fixed, frozen, batch):
        outputs = forward(module, method.params(frozen, trainable, fixed), batch, deterministic=True)
        return outputs.astype(jnp.float32) if task is None else task.eval_outputs(outputs, batch)

    s = shardings.state
    return jax.jit(
        eval_step,
        in_shardings=(s.trainable, s.fixed, shardings.frozen, shardings.batch),
        out_shardings=shardings.replicated,
    )


def evaluate(eval_step: Callable, state: TrainState, frozen, data, batch_size: int,
             batch_shard: jax.sharding.NamedSharding, task: tasks.Task) -> np.ndarray:
    """Outputs for every example of ``data``, in its order, from ``task.eval_batches``.

    Every batch is dispatched before the first result is read, so the host never waits in between.

    The module docstring evaluates a tiny split; its outputs feed ``task.metrics``.
    """
    dispatched = [
        (eval_step(state.trainable, state.fixed, frozen, sh.put_batch(batch, batch_shard, task.device_keys)), rows)
        for batch, rows in task.eval_batches(data, batch_size)
    ]
    result = None
    for outputs, rows in dispatched:
        outputs = np.asarray(jax.device_get(outputs))[: len(rows)]
        if result is None:
            result = np.empty((data.num_examples,) + outputs.shape[1:], outputs.dtype)
        result[rows] = outputs
    return result
