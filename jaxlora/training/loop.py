"""The training loop: one jitted, explicitly sharded step that differentiates the adapter only.

``train(config, workdir)`` is the whole program behind ``train.py``:

    build  -> GLUE splits (protocol 90/10 + dev as test), tokenized and cached; the model and its
              frozen params; the adapter; optax; the mesh and every array's NamedSharding
    resume -> the latest readable orbax checkpoint in workdir (state + data position)
    loop   -> step = jit(grad w.r.t. trainable -> optax update), validation every eval_every steps,
              checkpoints (latest N + best), metrics.jsonl, a progress bar
    finish -> restore the best checkpoint, evaluate the test split, write predictions.jsonl,
              results.json, learning_curves.png, and export the adapter (native + PEFT)

What the step sees. The frozen params are an argument of the jitted step (placed once, never
donated, never differentiated); the state ``TrainState(step, trainable, fixed, opt_state, rng)`` is
donated and returned updated. The loss is a function of ``trainable`` alone::

    params = jaxlora.apply(frozen, Adapter(trainable, fixed), cfg, mode="factored")
    loss   = masked_mean(cross_entropy(module.apply({"params": params}, batch)), example_mask)

so ``jax.grad`` gives gradients of the adapter (and head) only; optimiser moments exist for those
leaves only. Full fine-tuning (``lora.variant = "full"``) is the same step with
``trainable = {"lowrank": {}, "full": <all params>}`` and no frozen tree at all.

Dropout keys are ``fold_in(rng, step)``, so a resumed run draws the same masks as an uninterrupted
one; the data order is a pure function of ``(seed, epoch)``; together with the restored optimiser
state a resumed run reproduces the uninterrupted one to float rounding.

The host never waits for the step it just launched: the loss of step ``n`` is read after step
``n + 1`` is dispatched, so batch assembly overlaps device compute.

Example::

    import configs.lora_sst2
    config = configs.lora_sst2.get_config("offline")
    config.max_steps = 200
    results = jaxlora.training.train(config, "runs/lora")
    results["test_metric"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxlora
from jaxlora import data as jdata
from jaxlora.adapters.config import AdapterConfig
from jaxlora.adapters.core import Adapter
from jaxlora.training import checkpoint as ckpt_lib
from jaxlora.training import config as config_lib
from jaxlora.training import optim, reporting
from jaxlora.training import sharding as sh
from jaxlora.training.metrics import compute_metrics

__all__ = [
    "TrainState",
    "Run",
    "NonFiniteLossError",
    "model_params",
    "loss_fn",
    "make_train_step",
    "make_eval_step",
    "evaluate",
    "build",
    "train",
]

log = logging.getLogger("jaxlora.training")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


class TrainState(NamedTuple):
    """Everything a step changes (and a checkpoint saves): never the frozen params."""

    step: jax.Array  # int32 scalar: steps done
    trainable: dict  # {"lowrank": ..., "full": ...}
    fixed: dict  # frozen parts of the adapter (B-only's random a)
    opt_state: Any
    rng: jax.Array  # uint32 key data; step n's dropout key is fold_in(rng, n)


# --------------------------------------------------------------------------------------------
# The pure pieces: params, loss, the step


def model_params(frozen: Mapping, trainable: Mapping, fixed: Mapping, adapter_config: AdapterConfig | None) -> dict:
    """The params the model runs on: the adapter applied factored, or (full fine-tuning) ``trainable["full"]``.

    Example::

        params = model_params(frozen, state.trainable, state.fixed, cfg)
        logits = module.apply({"params": params}, ids, mask)
    """
    if adapter_config is None:
        return trainable["full"]
    return jaxlora.apply(frozen, Adapter(dict(trainable), fixed), adapter_config, mode="factored")


def loss_fn(outputs: jax.Array, labels: jax.Array, example_mask: jax.Array, regression: bool) -> jax.Array:
    """Mean cross-entropy (classification) or squared error (regression) over real examples.

    Dummy rows of a partial batch (``example_mask == 0``) weigh nothing.

    Example::

        loss_fn(jnp.array([[2.0, 0.0]]), jnp.array([0]), jnp.array([1.0]), regression=False)   # 0.127
    """
    outputs = outputs.astype(jnp.float32)
    if regression:
        per_example = jnp.square(outputs[:, 0] - labels.astype(jnp.float32))
    else:
        per_example = optax.softmax_cross_entropy_with_integer_labels(outputs, labels.astype(jnp.int32))
    mask = example_mask.astype(jnp.float32)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _forward(module, params, batch, deterministic: bool, dropout_key=None):
    kwargs = {}
    if getattr(module.spec, "family", "bert") != "llama":
        kwargs["token_type_ids"] = batch["token_type_ids"]
    rngs = None if deterministic else {"dropout": dropout_key}
    return module.apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], deterministic=deterministic, rngs=rngs, **kwargs
    )


class StateShardings(NamedTuple):
    """NamedShardings of a run: the state, the frozen params, batches, replicated scalars."""

    state: TrainState
    frozen: Any
    batch: jax.sharding.NamedSharding
    replicated: jax.sharding.NamedSharding


def make_train_step(
    module, adapter_config: AdapterConfig | None, optimizer: optax.GradientTransformation, regression: bool,
    shardings: StateShardings,
) -> Callable:
    """``step(state, frozen, batch) -> (state, {"loss", "grad_norm", "params_finite"})``, jitted, explicitly sharded.

    The state is donated (updated in place); ``frozen`` is not.

    Example::

        step = make_train_step(module, cfg, tx, regression=False, shardings=run.shardings)
        state, metrics = step(state, frozen, put_batch(batch, run.shardings.batch))
    """

    def step(state: TrainState, frozen, batch):
        dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_of(trainable):
            params = model_params(frozen, trainable, state.fixed, adapter_config)
            outputs = _forward(module, params, batch, deterministic=False, dropout_key=dropout_key)
            return loss_fn(outputs, batch["labels"], batch["example_mask"], regression)

        loss, grads = jax.value_and_grad(loss_of)(state.trainable)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        new_state = state._replace(step=state.step + 1, trainable=trainable, opt_state=opt_state)
        # One pass over the (small) trainable tree, so a non-finite update is caught before it is saved.
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trainable)] or [jnp.bool_(True)]))
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "params_finite": finite}

    rep = shardings.replicated
    return jax.jit(
        step,
        in_shardings=(shardings.state, shardings.frozen, shardings.batch),
        out_shardings=(shardings.state, {"loss": rep, "grad_norm": rep, "params_finite": rep}),
        donate_argnums=(0,),
    )


def make_eval_step(module, adapter_config: AdapterConfig | None, shardings: StateShardings) -> Callable:
    """``eval_step(trainable, fixed, frozen, batch) -> outputs`` (logits or scores), replicated.

    Example::

        logits = eval_step(state.trainable, state.fixed, frozen, device_batch)
    """

    def eval_step(trainable, fixed, frozen, batch):
        params = model_params(frozen, trainable, fixed, adapter_config)
        return _forward(module, params, batch, deterministic=True).astype(jnp.float32)

    s = shardings.state
    return jax.jit(
        eval_step,
        in_shardings=(s.trainable, s.fixed, shardings.frozen, shardings.batch),
        out_shardings=shardings.replicated,
    )


def evaluate(
    eval_step: Callable, state: TrainState, frozen, data: jdata.TokenizedDataset, batch_size: int,
    batch_shard, buckets: Sequence[int],
) -> np.ndarray:
    """Outputs for every example of ``data``, in its order (shortest batches first, put back in place).

    Example::

        logits = evaluate(eval_step, state, frozen, valid_data, 64, run.shardings.batch, run.buckets)
        compute_metrics("sst2", logits, valid_data.labels)
    """
    order = np.argsort(data.lengths, kind="stable")
    chunks = []
    for batch in jdata.iterate_eval(data, batch_size, buckets=buckets, sort_by_length=True):
        outputs = eval_step(state.trainable, state.fixed, frozen, sh.put_batch(batch, batch_shard))
        real = int(batch["example_mask"].sum())
        chunks.append((outputs, real))
    gathered = np.concatenate([np.asarray(jax.device_get(o))[:n] for o, n in chunks])
    result = np.empty_like(gathered)
    result[order] = gathered
    return result


# --------------------------------------------------------------------------------------------
# Building a run from a config


class Run(NamedTuple):
    """Everything derived from a config before the first step (see :func:`build`)."""

    config: Any
    task: jdata.GlueTask
    module: Any
    frozen: Any  # on device (empty for full fine-tuning)
    frozen_host: Any  # the frozen params as loaded (for exports)
    adapter_config: AdapterConfig | None
    train_data: jdata.TokenizedDataset
    validation_data: jdata.TokenizedDataset
    test_data: jdata.TokenizedDataset
    buckets: tuple[int, ...]
    optimizer: optax.GradientTransformation
    optimizer_spec: optim.OptimizerSpec
    steps_per_epoch: int
    total_steps: int
    mesh: jax.sharding.Mesh
    shardings: StateShardings
    initial_state: TrainState  # on device
    param_counts: jaxlora.ParamCount
    metric_name: str


def _load_model(config, task: jdata.GlueTask):
    overrides = {}
    if config.model_dropout >= 0:
        overrides = {"hidden_dropout_prob": float(config.model_dropout),
                     "attention_probs_dropout_prob": float(config.model_dropout)}
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    with warnings.catch_warnings():
        # A fresh task head is expected (pretrained checkpoints have none): not worth a warning here.
        warnings.filterwarnings("ignore", message="Initialised .* weights not in the checkpoint")
        return jaxlora.models.from_pretrained(
            config.model,
            task="regression" if task.is_regression else "sequence_classification",
            num_labels=task.num_labels,
            dtype=dtype,
            seed=int(config.seed),
            config_overrides=overrides,
            remat=bool(config.remat),
        )


def _load_data(config, task: jdata.GlueTask):
    tokenizer = jaxlora.models.load_tokenizer(config.tokenizer or config.model)
    data_dir = config.data_dir or None
    splits = jdata.protocol_splits(
        task, data_dir=data_dir, source="local" if data_dir else "hub",
        validation_fraction=float(config.validation_fraction), seed=int(config.split_seed),
    )
    cache_dir = config.cache_dir or None
    tokenized = [
        jdata.tokenize(split, tokenizer, int(config.max_length), cache_dir=cache_dir, name=f"{task.name}-{name}")
        for name, split in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
    ]
    if config.max_eval_examples > 0 and tokenized[1].num_examples > config.max_eval_examples:
        # The protocol's validation slice is already a random shuffle: its head is a random subset.
        tokenized[1] = jdata.select(tokenized[1], np.arange(int(config.max_eval_examples)))
    return tokenized


def _host_copy(tree):
    # Fresh float32 host buffers: trained leaves must never alias the frozen arrays they start from
    # (the state is donated to the step, which would free the frozen copy too).
    return jax.tree.map(lambda x: np.array(x, dtype=np.float32), tree)


def _initial_adapter(config, module, frozen_host, adapter_config: AdapterConfig | None):
    if config.init_from_peft:
        try:
            from jaxlora.interop import load_peft
        except ImportError as err:
            raise ImportError(
                "config.init_from_peft needs jaxlora.interop.load_peft, which this installation lacks."
            ) from err
        adapter, peft_config = load_peft(config.init_from_peft, module, frozen_host)
        log.info("Starting from the PEFT adapter in %s (its config replaces config.lora): %s",
                 config.init_from_peft, peft_config)
        return adapter, peft_config
    if adapter_config is None:
        return Adapter(trainable={"lowrank": {}, "full": frozen_host}, fixed={}), None
    key = jax.random.fold_in(jax.random.key(int(config.seed)), 1)
    return jaxlora.init(key, frozen_host, adapter_config), adapter_config


def build(config) -> Run:
    """Validate ``config`` and build everything a run needs (data, model, adapter, optimiser, shardings).

    Example::

        run = build(config)
        run.total_steps, run.param_counts.trainable
    """
    config_lib.validate(config)
    task = jdata.get_task(config.task)
    train_data, validation_data, test_data = _load_data(config, task)
    buckets = jdata.bucket_lengths(int(config.max_length), min(int(config.min_bucket), int(config.max_length)))
    module, frozen_host = _load_model(config, task)
    # Host copies: sharded device copies are made below; keeping a whole copy on one device would waste it.
    frozen_host = jax.device_get(frozen_host)
    adapter, adapter_config = _initial_adapter(config, module, frozen_host, config_lib.adapter_config(config))

    spe = jdata.steps_per_epoch(train_data.num_examples, int(config.batch_size))
    total = spe * config_lib.num_epochs(config)
    if config.max_steps > 0:
        total = min(total, int(config.max_steps))
    spec = optim.optimizer_spec(config, config_lib.learning_rate(config))
    optimizer = optim.make_optimizer(spec, total)

    mesh = sh.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % shards:
            raise ValueError(
                f"config.{name}={config[name]} is not divisible by the {shards} batch shards of the mesh "
                f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}): use a multiple of {shards}."
            )
    full_sh = sh.frozen_shardings(module, frozen_host, mesh)
    trainable_host = _host_copy(adapter.trainable)
    fixed_host = _host_copy(adapter.fixed)
    trainable_sh, fixed_sh = sh.adapter_shardings(
        trainable_host, fixed_host, mesh, full_sh, int(config.mesh.adapter_fsdp_min_size)
    )
    rep = sh.replicated(mesh)
    opt_shapes = jax.eval_shape(optimizer.init, trainable_host)
    opt_sh = sh.like_params(opt_shapes, trainable_host, trainable_sh, mesh)
    state_sh = TrainState(step=rep, trainable=trainable_sh, fixed=fixed_sh, opt_state=opt_sh, rng=rep)

    if adapter_config is None:
        frozen, frozen_sh = {}, {}  # full fine-tuning: the model lives in the trainable tree only
    else:
        frozen, frozen_sh = sh.put_tree(frozen_host, full_sh), full_sh
    shardings = StateShardings(state=state_sh, frozen=frozen_sh, batch=sh.batch_sharding(mesh), replicated=rep)

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
    if adapter_config is None:
        total_params = sum(int(np.size(x)) for x in jax.tree.leaves(frozen_host))
        counts = jaxlora.ParamCount(lowrank=0, full=total_params, fixed=0, frozen=total_params)
    else:
        counts = jaxlora.count_params(adapter, frozen_host)
    return Run(
        config=config, task=task, module=module, frozen=frozen, frozen_host=frozen_host,
        adapter_config=adapter_config, train_data=train_data, validation_data=validation_data,
        test_data=test_data, buckets=buckets, optimizer=optimizer, optimizer_spec=spec,
        steps_per_epoch=spe, total_steps=total, mesh=mesh, shardings=shardings, initial_state=state,
        param_counts=counts, metric_name=task.primary_metric,
    )


# --------------------------------------------------------------------------------------------
# The program


@dataclasses.dataclass
class _Tracker:
    """Host-side bookkeeping of the loop (timings, the best validation so far, what is pending)."""

    best_metric: float = -math.inf
    best_step: int = -1
    last_saved: int = -1
    last_eval_step: int = -1
    train_examples: int = 0
    train_time: float = 0.0  # seconds in the training loop (no evaluation, no first compile)
    host_time: float = 0.0  # part of it the host was busy: batches, dispatch, logging, checkpoint calls
    wait_time: float = 0.0  # part of it the host waited for the device (the step itself)
    eval_time: float = 0.0
    window_losses: list = dataclasses.field(default_factory=list)
    window_examples: int = 0
    window_start: float = 0.0


def _meta(loader: jdata.LoaderState, step: int, tracker: _Tracker, run: Run, validation=None) -> dict:
    return {
        "step": int(step),
        "loader": [int(v) for v in loader],
        "best_step": tracker.best_step,
        "best_metric": tracker.best_metric if math.isfinite(tracker.best_metric) else None,
        "metric_name": run.metric_name,
        "validation": validation,
        "total_steps": run.total_steps,
        "task": run.task.name,
        "variant": run.config.lora.variant,
        "model": run.config.model,
        "batch_size": int(run.config.batch_size),
    }


def _check_resumable(meta: Mapping, run: Run, directory: str) -> None:
    for key, current in (("task", run.task.name), ("variant", run.config.lora.variant),
                         ("model", run.config.model), ("batch_size", int(run.config.batch_size))):
        if key in meta and meta[key] != current:
            raise ValueError(
                f"The checkpoints in {directory} are from a run with {key}={meta[key]!r}, this config has "
                f"{current!r}: use a new --workdir, or delete the old checkpoints."
            )
    if meta.get("total_steps") not in (None, run.total_steps):
        log.warning("Resuming a run planned for %s steps with %s steps: the learning-rate schedule changes.",
                    meta["total_steps"], run.total_steps)


def _last_good_checkpoint(checkpointer: ckpt_lib.Checkpointer, last_saved: int) -> str:
    """The step a NaN message may call good: only one whose digest was written or checked by this run."""
    verified = checkpointer.verified_steps
    if verified:
        return f"step {verified[-1]} in {checkpointer.directory}"
    if last_saved >= 0:
        return (f"unknown: no checkpoint in {checkpointer.directory} is verified (config.checkpoint.verify is off, "
                "or the checkpoints predate digests)")
    return "none (no checkpoint was saved yet)"


def _export(run: Run, workdir: str, state: TrainState, step: int) -> dict:
    """Write workdir/adapter (native) and workdir/peft_adapter; the merged model for full fine-tuning."""
    exported = {}
    if jax.process_index() != 0:
        return exported  # one writer
    trainable = jax.device_get(state.trainable)
    fixed = jax.device_get(state.fixed)
    if run.adapter_config is None:
        path = os.path.join(workdir, "model")
        jaxlora.models.save_pretrained(run.module, trainable["full"], path)
        return {"model": path}
    try:
        from jaxlora import interop
    except ImportError:
        interop = None
    adapter = Adapter(trainable=trainable, fixed=fixed)
    meta = {"task": run.task.name, "base_model": run.config.model, "step": int(step), "metric_name": run.metric_name}
    for name, key, call in (
        ("save_adapter", "adapter",
         lambda f, path: f(path, adapter, run.adapter_config, metadata=meta)),
        ("save_peft", "peft_adapter",
         lambda f, path: f(path, run.module, run.frozen_host, adapter, run.adapter_config)),
    ):
        fn = getattr(interop, name, None) if interop is not None else None
        if fn is None:
            log.warning("jaxlora.interop.%s is not available in this installation: %s/ not written.", name, key)
            continue
        path = os.path.join(workdir, key)
        try:
            call(fn, path)
            exported[key] = path
        except (ValueError, NotImplementedError) as err:
            # e.g. a variant PEFT cannot express; the native format and the checkpoints still hold it.
            log.warning("Could not write %s/: %s", key, err)
    return exported


def train(config, workdir: str | os.PathLike, *, hooks: Sequence[Callable[[int], None]] = ()) -> dict:
    """Train, select the best validation checkpoint, test it, write reports and exports; return results.

    Args:
      config: a training config (see :func:`jaxlora.training.default_config` and ``configs/``).
      workdir: output folder; a run with checkpoints there resumes from the latest readable one.
      hooks: callables ``hook(step)`` run on the host after each step is dispatched (a hook raising
        ``KeyboardInterrupt`` behaves like Ctrl-C: a checkpoint is saved, then it propagates).

    Returns:
      The ``results.json`` document: task, variant, metric_name, test_metric, best_step,
      trainable_params, train_examples_per_s, wall_time_s and more.

    Raises:
      NonFiniteLossError: the loss became NaN/inf (the message names the step and the last good checkpoint).
      KeyboardInterrupt: after saving a checkpoint of the last finished step.

    Example::

        results = train(configs.lora_sst2.get_config("offline"), "runs/lora")
    """
    wall_start = time.perf_counter()
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    run = build(config)
    cfg = run.config
    log.info("%s on %s: %d train / %d validation / %d test examples; %d steps (%d per epoch); mesh %s",
             cfg.lora.variant, run.task.display_name, run.train_data.num_examples, run.validation_data.num_examples,
             run.test_data.num_examples, run.total_steps, run.steps_per_epoch, dict(run.mesh.shape))
    if run.adapter_config is not None:
        log.info("\n%s", jaxlora.param_table(run.frozen_host, Adapter(
            jax.device_get(run.initial_state.trainable), jax.device_get(run.initial_state.fixed)), run.adapter_config))

    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not cfg.resume and os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir)):
        raise FileExistsError(
            f"{ckpt_dir} already holds checkpoints and config.resume is False: use a new --workdir "
            "(or --config.resume=True to continue that run)."
        )
    checkpointer = ckpt_lib.Checkpointer(ckpt_dir, keep=int(cfg.checkpoint.keep), async_save=bool(cfg.checkpoint.async_save),
                                         verify=bool(cfg.checkpoint.verify))
    shardings = run.shardings
    state_target = ckpt_lib.abstract_like(run.initial_state, shardings.state)
    tracker = _Tracker()
    state, loader, step = run.initial_state, jdata.LoaderState(seed=int(cfg.seed)), 0
    restored = checkpointer.restore_latest(state_target) if cfg.resume else None
    if restored is not None:
        _check_resumable(restored.meta, run, ckpt_dir)
        state, step = restored.state, restored.step
        loader = jdata.LoaderState.from_array(restored.meta["loader"])
        tracker.best_step = int(restored.meta.get("best_step", -1))
        tracker.best_metric = float(restored.meta.get("best_metric") or -math.inf)
        tracker.last_saved = step
        if restored.meta.get("validation") is not None:
            tracker.last_eval_step = step
        log.info("Resumed from step %d (%s).", step, ckpt_dir)

    metrics_log = reporting.MetricsLog(os.path.join(workdir, "metrics.jsonl"), resume_step=step)
    train_step = make_train_step(run.module, run.adapter_config, run.optimizer, run.task.is_regression, shardings)
    eval_step = make_eval_step(run.module, run.adapter_config, shardings)
    schedule = optim.schedule_of(run.optimizer_spec, run.total_steps)
    eval_every = int(cfg.eval_every) if cfg.eval_every > 0 else run.steps_per_epoch
    log_every = max(int(cfg.log_every), 1)

    def validate_and_save(state: TrainState, step: int, loader) -> None:
        t0 = time.perf_counter()
        outputs = evaluate(eval_step, state, run.frozen, run.validation_data, int(cfg.eval_batch_size),
                           shardings.batch, run.buckets)
        metrics = compute_metrics(run.task, outputs, run.validation_data.labels)
        value = float(metrics[run.metric_name])
        if value >= tracker.best_metric:  # ties go to the later step, as orbax's BestN keeps them
            tracker.best_metric, tracker.best_step = value, step
        tracker.last_eval_step = step
        tracker.eval_time += time.perf_counter() - t0
        tracker.window_start += time.perf_counter() - t0  # the logged examples/s is training only
        metrics_log.write({"step": step, "split": "validation", **metrics})
        bar.write(f"step {step}: validation {', '.join(f'{k} {v:.4f}' for k, v in metrics.items())}"
                  f" (best {tracker.best_metric:.4f} at step {tracker.best_step})")
        if checkpointer.save(step, state, _meta(loader, step, tracker, run, metrics), metric=value):
            tracker.last_saved = step

    def check_loss(done_step: int, loss: float, params_finite: bool) -> None:
        if math.isfinite(loss) and params_finite:
            return
        checkpointer.wait()
        good = _last_good_checkpoint(checkpointer, tracker.last_saved)
        what = (f"The training loss is {loss} at step {done_step}" if not math.isfinite(loss)
                else f"The parameters are not finite after the update of step {done_step}")
        raise NonFiniteLossError(
            f"{what}: training stopped. The last good checkpoint is {good}. "
            "Lower the learning rate (--config.optimizer.learning_rate) or clip gradients "
            "(--config.optimizer.clip_norm=1.0), then rerun; a rerun resumes from that checkpoint."
        )

    pending: list = []  # (step, metrics on device, real examples): read one step late

    def drain() -> None:
        while pending:
            done, metrics, examples = pending.pop(0)
            t0 = time.perf_counter()
            metrics = jax.device_get(metrics)  # waits for the step: device time, not host time
            tracker.wait_time += time.perf_counter() - t0
            loss = float(metrics["loss"])
            check_loss(done, loss, bool(metrics["params_finite"]))
            tracker.window_losses.append(loss)
            tracker.window_examples += examples
            if done % log_every == 0 or done == run.total_steps:
                now = time.perf_counter()
                rate = tracker.window_examples / max(now - tracker.window_start, 1e-9)
                record = {"step": done, "split": "train", "loss": float(np.mean(tracker.window_losses)),
                          "grad_norm": float(metrics["grad_norm"]), "learning_rate": float(schedule(done - 1)),
                          "examples_per_s": rate}
                metrics_log.write(record)
                bar.update(0, loss=record["loss"], examples_per_s=rate)
                tracker.window_losses, tracker.window_examples, tracker.window_start = [], 0, now

    bar = reporting.Progress(run.total_steps, initial=step, enabled=bool(cfg.progress_bar))
    batches = jdata.iterate(run.train_data, loader, int(cfg.batch_size), buckets=run.buckets,
                            group_by_length=bool(cfg.group_by_length))
    compiled_shapes: set = set()  # the first step of each bucket length compiles: not throughput
    tracker.window_start = time.perf_counter()
    try:
        while step < run.total_steps:
            t_iter, eval_before, wait_before = time.perf_counter(), tracker.eval_time, tracker.wait_time
            batch, next_loader = next(batches)
            device_batch = sh.put_batch(batch, shardings.batch)
            state, metrics = train_step(state, run.frozen, device_batch)
            step, loader = step + 1, next_loader
            examples = int(batch["example_mask"].sum())
            drain()  # the previous step's loss: ready by now or soon, while this step runs
            pending.append((step, metrics, examples))
            for hook in hooks:
                hook(step)
            bar.update(1)
            if step % eval_every == 0 or step == run.total_steps:
                drain()
                validate_and_save(state, step, loader)
            elif cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0:
                drain()
                if checkpointer.save(step, state, _meta(loader, step, tracker, run)):
                    tracker.last_saved = step
            t_end = time.perf_counter() - (tracker.eval_time - eval_before)  # validation is not training
            shape = batch["input_ids"].shape
            if shape not in compiled_shapes:
                compiled_shapes.add(shape)
                if len(compiled_shapes) == 1:
                    tracker.window_start = t_end
            else:
                tracker.train_examples += examples
                tracker.train_time += t_end - t_iter
                tracker.host_time += (t_end - t_iter) - (tracker.wait_time - wait_before)
        drain()
    except KeyboardInterrupt:
        bar.close()
        try:
            drain()
        except NonFiniteLossError:
            raise
        if checkpointer.save(step, state, _meta(loader, step, tracker, run)):
            tracker.last_saved = step
        checkpointer.close()
        message = (f"Interrupted at step {step}: saved a checkpoint in {ckpt_dir}. "
                   "Run the same command again to resume from it.")
        print(message, flush=True)  # always visible, whatever the logging setup
        raise
    except BaseException:
        bar.close()
        checkpointer.close()
        raise
    bar.close()
    if tracker.last_eval_step != step:
        validate_and_save(state, step, loader)
    checkpointer.wait()
    tracker.train_time = max(tracker.train_time, 1e-9)

    # ---- the selected checkpoint on the test split
    best_step = tracker.best_step if tracker.best_step >= 0 else step
    if best_step != step and best_step not in checkpointer.steps:
        log.warning("The best checkpoint (step %d) is gone (moved aside as unreadable?): testing step %d instead.",
                    best_step, step)
        best_step = step
    if best_step != step:
        state = checkpointer.restore(best_step, state_target).state
    checkpointer.close()
    test_outputs = evaluate(eval_step, state, run.frozen, run.test_data, int(cfg.eval_batch_size),
                            shardings.batch, run.buckets)
    test_metrics = compute_metrics(run.task, test_outputs, run.test_data.labels)
    metrics_log.write({"step": best_step, "split": "test", **test_metrics})
    reporting.write_predictions(os.path.join(workdir, "predictions.jsonl"), run.test_data.idx,
                                run.test_data.labels, test_outputs)
    exported = _export(run, workdir, state, best_step) if cfg.export else {}
    if cfg.plot:
        reporting.plot_learning_curves(os.path.join(workdir, "metrics.jsonl"),
                                       os.path.join(workdir, "learning_curves.png"), run.metric_name,
                                       title=f"{cfg.lora.variant} on {run.task.display_name}")
    results = {
        "task": run.task.name,
        "variant": cfg.lora.variant,
        "model": cfg.model,
        "metric_name": run.metric_name,
        "test_metric": float(test_metrics[run.metric_name]),
        "test_metrics": test_metrics,
        "best_step": int(best_step),
        "best_validation_metric": tracker.best_metric if math.isfinite(tracker.best_metric) else None,
        "steps": int(step),
        "total_steps": run.total_steps,
        "trainable_params": int(run.param_counts.trainable),
        "param_counts": run.param_counts._asdict(),
        "train_examples_per_s": tracker.train_examples / tracker.train_time if tracker.train_examples else None,
        "host_share_of_step_time": tracker.host_time / tracker.train_time if tracker.train_examples else None,
        "wall_time_s": time.perf_counter() - wall_start,
        "learning_rate": run.optimizer_spec.learning_rate,
        "devices": len(run.mesh.devices.flat),
        "mesh": dict(run.mesh.shape),
        "exported": exported,
        "config": config_lib.to_dict(cfg),
    }
    reporting.write_results(os.path.join(workdir, "results.json"), results)
    log.info("Test %s %.4f (best validation step %d); results in %s", run.metric_name,
             results["test_metric"], best_step, workdir)
    return results
