"""The training program: ``train(config, workdir)``, the whole run behind ``train.py``.

    build  -> the run: task data, model, method, optimiser, mesh (:func:`~jaxlora.training.build`)
    resume -> the latest readable orbax checkpoint in workdir (state + data position)
    loop   -> the jitted step (:mod:`~jaxlora.training.step`), validation every eval_every steps
              (and at step 0 before training with eval_at_start: the zero-shot score),
              checkpoints (latest N + best), metrics.jsonl, a progress bar
    finish -> restore the best checkpoint, evaluate the test split, write the task's predictions,
              results.json, learning_curves.png, and the method's exports

The loop talks to the run's task (batches, metrics, predictions) and method (exports) and knows
neither. The data order is a pure function of ``(seed, epoch)`` and dropout keys are
``fold_in(rng, step)``; with the restored optimiser state, a resumed run reproduces the
uninterrupted one to float rounding.

The host never waits for the step it just launched: the loss of step ``n`` is read after step
``n + 1`` is dispatched, so batch assembly overlaps device compute
(:mod:`~jaxlora.training.throughput` keeps the books).

Resume and interrupts each live in their own functions (:func:`_resume`, :meth:`_Loop.interrupted`).

A full run trains a real model, so it is shown as a command rather than a doctest:
``python train.py --config configs/lora_sst2.py:offline --config.max_steps=200 --workdir runs/lora``
is ``train(configs.lora_sst2.get_config("offline"), "runs/lora")`` with that one override, and
``results["test_metric"]`` is the GLUE-dev accuracy of the best validation checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from jaxlora import data as jdata
from jaxlora import errors, tasks
from jaxlora.adapters.core import Adapter
from jaxlora.training import checkpoint as ckpt_lib
from jaxlora.training import config as config_lib
from jaxlora.training import distributed, interrupts
from jaxlora.training import optim, reporting
from jaxlora.training import sharding as sh
from jaxlora.training import workdir as workdir_lib
from jaxlora.training.assembly import Run, build
from jaxlora.training.step import TrainState, evaluate, make_eval_step, make_train_step
from jaxlora.training.throughput import Throughput

__all__ = ["NonFiniteLossError", "DivergenceError", "train"]

log = logging.getLogger("jaxlora.training")


class NonFiniteLossError(errors.TrainingStoppedError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


class DivergenceError(errors.TrainingStoppedError):
    """The loss stayed over ``divergence.factor`` times its first logged value for ``divergence.steps`` steps."""


@dataclasses.dataclass
class _Divergence:
    """Counts consecutive steps whose loss is over ``factor`` x the first logged loss (``steps`` 0: off)."""

    factor: float
    steps: int
    reference: float | None = None
    over: int = 0

    def diverged(self, loss: float) -> bool:
        if self.steps <= 0 or self.reference is None:
            return False
        self.over = self.over + 1 if loss > self.factor * self.reference else 0
        return self.over >= self.steps


@dataclasses.dataclass
class _Selection:
    """Checkpoint bookkeeping: the best validation so far, the last step saved and validated."""

    best_metric: float = -math.inf
    best_step: int = -1
    last_saved: int = -1
    last_eval_step: int = -1
    stale: int = 0  # validations in a row without a strictly better metric (early stopping counts them)


def _meta(loader: jdata.LoaderState, step: int, selection: _Selection, run: Run, validation=None) -> dict:
    return {
        "step": int(step),
        "loader": [int(v) for v in loader],
        "best_step": selection.best_step,
        "best_metric": selection.best_metric if math.isfinite(selection.best_metric) else None,
        "stale_validations": selection.stale,
        "metric_name": run.metric_name,
        "validation": validation,
        "total_steps": run.total_steps,
        **_run_identity(run),  # what a rerun must share to resume (task, variant, model, batch, adapter)
    }


def _config_identity(config) -> dict:
    adapter = None if config.init_from_peft else config_lib.adapter_config(config)  # PEFT's config is read later
    return workdir_lib.run_identity(tasks.from_config(config).name, config.lora.variant, config.model,
                                    config.batch_size, adapter.to_dict() if adapter is not None else None)


def _run_identity(run: Run) -> dict:
    adapter = run.method.adapter_config
    return workdir_lib.run_identity(run.task.name, run.method.name, run.config.model, run.config.batch_size,
                                    adapter.to_dict() if adapter is not None else None)


def _set_aside_outputs(workdir: str, exclude: tuple[str, ...] = ()) -> None:
    if distributed.is_main_process():  # one process moves; the others wait until it is done
        moved = workdir_lib.move_outputs_to_previous(workdir, exclude=exclude)
        if moved is not None:
            print(f"Starting over: moved the previous run's outputs to {moved}.", flush=True)
    distributed.wait_for_all("outputs set aside")


def _refuse_or_set_aside_previous_run(config, workdir: str) -> None:
    """Reruns never destroy: another run's checkpoints are refused; starting over moves old outputs first."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    newest = None
    if os.path.isdir(ckpt_dir) and config.resume:
        reader = ckpt_lib.Checkpointer(ckpt_dir, async_save=False)
        try:
            newest = reader.newest_meta()
        finally:
            reader.close()
    if newest is not None:
        workdir_lib.check_same_run(newest, _config_identity(config), ckpt_dir)
        return  # a resume: restore_latest checks every step it tries the same way
    _set_aside_outputs(workdir)


def _resume_check(run: Run, ckpt_dir: str) -> Callable[[dict], None]:
    """The metadata check of each checkpoint tried: same run, and a loader position inside the data."""
    identity = _run_identity(run)

    def check(meta: dict) -> None:
        workdir_lib.check_same_run(meta, identity, ckpt_dir)
        try:
            loader = jdata.LoaderState.from_array(meta["loader"])
        except (KeyError, TypeError, ValueError) as err:
            raise errors.CorruptCheckpointError(f"Checkpoint step {meta.get('step')} in {ckpt_dir} has no valid "
                                                f"loader position ({type(err).__name__}: {err}).") from None
        if not (loader.epoch >= 0 and 0 <= loader.step <= run.steps_per_epoch):
            raise errors.CorruptCheckpointError(
                f"Checkpoint step {meta.get('step')} in {ckpt_dir} has a loader position {list(loader)} "
                f"(epoch, batch, seed) outside the data ({run.steps_per_epoch} batches per epoch).")

    return check


def _warn_on_other_schedule(meta: Mapping, run: Run) -> None:
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


def _resume(run: Run, checkpointer: ckpt_lib.Checkpointer, state_target, ckpt_dir: str):
    """``(state, loader, step, selection)`` of the latest readable checkpoint, or of a fresh start."""
    start = (run.initial_state, jdata.LoaderState(seed=int(run.config.seed)), 0, _Selection())
    restored = checkpointer.restore_latest(state_target, _resume_check(run, ckpt_dir)) if run.config.resume else None
    if restored is None:
        _set_aside_outputs(os.path.dirname(ckpt_dir), exclude=("checkpoints",))  # all corrupt: a fresh start
        return start
    _warn_on_other_schedule(restored.meta, run)
    step = restored.step
    selection = _Selection(best_step=int(restored.meta.get("best_step", -1)),
                           best_metric=float(restored.meta.get("best_metric") or -math.inf),
                           last_saved=step, stale=int(restored.meta.get("stale_validations") or 0),
                           last_eval_step=step if restored.meta.get("validation") is not None else -1)
    log.info("Resumed from step %d (%s).", step, ckpt_dir)
    return restored.state, jdata.LoaderState.from_array(restored.meta["loader"]), step, selection


class _Loop:
    """One run's training loop: its steps, validations, checkpoints, logs and interrupts."""

    def __init__(self, run: Run, workdir: str, checkpointer: ckpt_lib.Checkpointer, selection: _Selection,
                 step: int):
        cfg = run.config
        self.run, self.checkpointer, self.selection = run, checkpointer, selection
        self.ckpt_dir = checkpointer.directory
        self.metrics_log = reporting.MetricsLog(os.path.join(workdir, "metrics.jsonl"), resume_step=step)
        self.train_step = make_train_step(run.module, run.method, run.optimizer, run.task, run.shardings)
        self.eval_step = make_eval_step(run.module, run.method, run.shardings, run.task)
        self.schedule = optim.schedule_of(run.optimizer_spec, run.total_steps)
        self.eval_every = config_lib.eval_every(cfg, run.steps_per_epoch)
        self.patience = config_lib.early_stopping_patience(cfg, run.task.name)
        self.log_every = max(int(cfg.log_every), 1)
        self.bar = reporting.Progress(run.total_steps, initial=step, enabled=bool(cfg.progress_bar))
        self.clock = Throughput(start=time.perf_counter())
        self.pending: list = []  # (step, metrics on device, real examples): read one step late
        self.divergence = _Divergence(float(cfg.divergence.factor), int(cfg.divergence.steps))

    def evaluate(self, state: TrainState, data) -> np.ndarray:
        run = self.run
        return evaluate(self.eval_step, state, run.frozen, data, int(run.config.eval_batch_size),
                        run.shardings.batch, run.task)

    def save(self, step: int, state: TrainState, loader, validation=None, metric=None) -> None:
        if self.checkpointer.save(step, state, _meta(loader, step, self.selection, self.run, validation),
                                  metric=metric):
            self.selection.last_saved = step

    def validate_and_save(self, state: TrainState, step: int, loader) -> None:
        t0 = time.perf_counter()
        metrics = self.run.task.metrics(self.evaluate(state, self.run.validation_data), self.run.validation_data)
        value = float(metrics[self.run.metric_name])
        best = self.selection
        # Early stopping counts a tie as no improvement (as the HF Trainer's callback does).
        best.stale = 0 if value > best.best_metric else best.stale + 1
        if value >= best.best_metric:  # ties go to the later step, as orbax's BestN keeps them
            best.best_metric, best.best_step = value, step
        best.last_eval_step = step
        self.clock.evaluated(time.perf_counter() - t0)
        self.metrics_log.write({"step": step, "split": "validation", **metrics})
        self.bar.write(f"step {step}: validation {', '.join(f'{k} {v:.4f}' for k, v in metrics.items())}"
                       f" (best {best.best_metric:.4f} at step {best.best_step})")
        self.save(step, state, loader, validation=metrics, metric=value)

    def validate_at_start(self, state: TrainState, step: int) -> dict | None:
        """The step-0 validation (``config.eval_at_start``): the score before any training, e.g. zero-shot.

        It goes to metrics.jsonl as ``step 0`` like every later validation, but it is no checkpoint
        candidate: the run selects among trained steps. A resumed run reads it back from metrics.jsonl.
        """
        if step > 0:  # resumed: the step-0 line is kept in metrics.jsonl (None if that run had it off)
            earlier = [r for r in reporting.read_metrics(self.metrics_log.path)
                       if r.get("step") == 0 and r.get("split") == "validation"]
            return {k: v for k, v in earlier[-1].items() if k not in ("step", "split")} if earlier else None
        t0 = time.perf_counter()
        metrics = self.run.task.metrics(self.evaluate(state, self.run.validation_data), self.run.validation_data)
        self.clock.evaluated(time.perf_counter() - t0)
        self.metrics_log.write({"step": 0, "split": "validation", **metrics})
        self.bar.write(f"step 0 (before training): validation {', '.join(f'{k} {v:.4f}' for k, v in metrics.items())}")
        return metrics

    def stopped_early(self) -> bool:
        """``early_stopping.patience`` validations in a row brought no new best."""
        return 0 < self.patience <= self.selection.stale

    def check_loss(self, done_step: int, loss: float, params_finite: bool) -> None:
        if math.isfinite(loss) and params_finite:
            return
        self.checkpointer.wait()
        good = _last_good_checkpoint(self.checkpointer, self.selection.last_saved)
        what = (f"The training loss is {loss} at step {done_step}" if not math.isfinite(loss)
                else f"The parameters are not finite after the update of step {done_step}")
        raise NonFiniteLossError(
            f"{what}: training stopped. The last good checkpoint is {good}.",
            "Lower the learning rate (--config.optimizer.learning_rate) or clip gradients "
            "(--config.optimizer.clip_norm=1.0), then rerun; a rerun resumes from that checkpoint."
        )

    def check_divergence(self, done_step: int, loss: float) -> None:
        """Stop, like a NaN does, when the loss ran away (see :class:`DivergenceError`)."""
        if not self.divergence.diverged(loss):
            return
        self.checkpointer.wait()
        div = self.divergence
        raise DivergenceError(
            f"The training loss diverged: {loss:.4g} at step {done_step} (learning rate "
            f"{float(self.schedule(done_step - 1)):.3g} of the configured {self.run.optimizer_spec.learning_rate:.3g}), over {div.factor:g}x the first logged loss "
            f"{div.reference:.4g} for {div.steps} steps in a row: training stopped. The last good checkpoint is "
            f"{_last_good_checkpoint(self.checkpointer, self.selection.last_saved)}.",
            "Lower the learning rate (--config.optimizer.learning_rate) or clip gradients "
            "(--config.optimizer.clip_norm=1.0); --config.divergence.steps=0 turns this check off.",
        )

    def drain(self) -> None:
        """Read the pending steps' metrics (waiting for them), check them, log every log_every steps."""
        while self.pending:
            done, metrics, examples = self.pending.pop(0)
            t0 = time.perf_counter()
            metrics = jax.device_get(metrics)  # waits for the step: device time, not host time
            self.clock.waited(time.perf_counter() - t0)
            loss = float(metrics["loss"])
            self.check_loss(done, loss, bool(metrics["params_finite"]))
            self.check_divergence(done, loss)
            self.clock.add_loss(loss, examples)
            if done % self.log_every == 0 or done == self.run.total_steps:
                mean_loss, rate = self.clock.take_window(time.perf_counter())
                if self.divergence.reference is None:
                    self.divergence.reference = mean_loss
                self.metrics_log.write({"step": done, "split": "train", "loss": mean_loss,
                                        "grad_norm": float(metrics["grad_norm"]),
                                        "learning_rate": float(self.schedule(done - 1)), "examples_per_s": rate})
                self.bar.update(0, loss=mean_loss, examples_per_s=rate)

    def steps(self, state: TrainState, loader, step: int, hooks: Sequence[Callable[[int], None]]):
        """Train from ``step`` to the end; return ``(state, loader, step)`` after the last one."""
        run, cfg = self.run, self.run.config
        # Several processes: each builds only the rows its devices hold (None: this process holds all).
        rows = sh.process_rows(run.shardings.batch, int(cfg.batch_size))
        batches = run.task.train_batches(run.train_data, loader, int(cfg.batch_size),
                                         **({} if rows is None else {"rows": rows}))
        if rows is not None:
            log.info("Process %d of %d builds rows %s of each training batch of %d.", jax.process_index(),
                     jax.process_count(), rows.tolist(), int(cfg.batch_size))
        self._at = (state, loader, step)
        while step < run.total_steps and not self.stopped_early():
            interrupts.raise_if_requested()  # a signal only set a flag: stop here, between steps
            self.clock.begin_step()
            batch, next_loader = next(batches)
            device_batch = sh.put_batch(batch, run.shardings.batch, run.task.device_keys,
                                        global_rows=int(cfg.batch_size))
            state, metrics = self.train_step(state, run.frozen, device_batch)
            step, loader = step + 1, next_loader
            self._at = (state, loader, step)
            examples = int(batch["global_examples"] if rows is not None else batch["example_mask"].sum())
            self.drain()  # the previous step's loss: ready by now or soon, while this step runs
            self.pending.append((step, metrics, examples))
            for hook in hooks:
                hook(step)
            self.bar.update(1)
            if step % self.eval_every == 0 or step == run.total_steps:
                self.drain()
                self.validate_and_save(state, step, loader)
                if self.stopped_early():
                    self.bar.write(f"step {step}: early stop, {self.selection.stale} validations without a new best")
            elif cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0:
                self.drain()
                self.save(step, state, loader)
            self.clock.end_step((int(cfg.batch_size),) + batch["input_ids"].shape[1:], examples)
        self.drain()
        return state, loader, step

    def interrupted(self) -> None:
        """After SIGINT/SIGTERM (or a hook's KeyboardInterrupt): write every record, save the last finished step."""
        state, loader, step = self._at
        self.bar.close()
        try:
            self.drain()  # waits for the dispatched steps: their records are written, then the state is final
        except errors.TrainingStoppedError:
            self.checkpointer.close()
            raise
        self.save(step, state, loader)
        self.checkpointer.close()
        print(f"Interrupted at step {step}: saved a checkpoint in {self.ckpt_dir}. "
              "Run the same command again to resume from it.", flush=True)  # visible whatever the logging

    def finish(self, state: TrainState, loader, step: int, state_target):
        """Validate the last step if needed, restore the best one, test it.

        Returns ``(state, best_step, test_metrics, test_outputs)`` of the selected step.
        """
        self.bar.close()
        if self.selection.last_eval_step != step:
            self.validate_and_save(state, step, loader)
        self.checkpointer.wait()
        use_best = self.run.config.test_step == "best" and self.selection.best_step >= 0
        best_step = self.selection.best_step if use_best else step
        if best_step != step and best_step not in self.checkpointer.steps:
            log.warning("The best checkpoint (step %d) is gone (moved aside as unreadable?): testing step %d "
                        "instead.", best_step, step)
            best_step = step
        if best_step != step:
            state = self.checkpointer.restore(best_step, state_target).state
        self.checkpointer.close()
        test_outputs = self.evaluate(state, self.run.test_data)
        test_metrics = self.run.task.metrics(test_outputs, self.run.test_data)
        self.metrics_log.write({"step": best_step, "split": "test", **test_metrics})
        return state, best_step, test_metrics, test_outputs


def _export(run: Run, workdir: str, state: TrainState, step: int) -> dict:
    """The method's exports of the selected state (process 0 writes)."""
    if jax.process_index() != 0:
        return {}
    adapter = Adapter(trainable=jax.device_get(state.trainable), fixed=jax.device_get(state.fixed))
    meta = {"task": run.task.name, "base_model": run.config.model, "step": int(step), "metric_name": run.metric_name}
    return run.method.export(workdir, run.module, run.frozen_host, adapter, meta)


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
      KeyboardInterrupt: after SIGINT/SIGTERM (which only set a flag, see :mod:`~jaxlora.training.interrupts`),
        at the next safe point, with a checkpoint of the last finished step saved.

    The module docstring gives the command; ``tests/training/test_configs.py`` runs it on a tiny BERT.
    """
    with interrupts.deferred():
        return _train(config, workdir, hooks)


def _train(config, workdir: str | os.PathLike, hooks: Sequence[Callable[[int], None]]) -> dict:
    wall_start = time.perf_counter()
    workdir = workdir_lib.prepare(workdir)  # a read-only or file workdir fails here, before anything loads
    config_lib.validate(config)
    _refuse_or_set_aside_previous_run(config, workdir)  # before the model loads, so a refusal is immediate
    run = build(config)
    interrupts.raise_if_requested()  # a signal during loading: nothing trained, nothing to save
    cfg = run.config
    log.info("%s on %s: %d train / %d validation / %d test examples; %d steps (%d per epoch); mesh %s",
             run.method.name, run.task.display_name, run.train_data.num_examples, run.validation_data.num_examples,
             run.test_data.num_examples, run.total_steps, run.steps_per_epoch, dict(run.mesh.shape))
    table = run.method.describe(run.frozen_host, Adapter(jax.device_get(run.initial_state.trainable),
                                                         jax.device_get(run.initial_state.fixed)))
    if table:
        log.info("\n%s", table)

    ckpt_dir = os.path.join(workdir, "checkpoints")
    checkpointer = ckpt_lib.Checkpointer(ckpt_dir, keep=int(cfg.checkpoint.keep),
                                         async_save=bool(cfg.checkpoint.async_save),
                                         verify=bool(cfg.checkpoint.verify))
    state_target = ckpt_lib.abstract_like(run.initial_state, run.shardings.state)
    state, loader, step, selection = _resume(run, checkpointer, state_target, ckpt_dir)
    loop = _Loop(run, workdir, checkpointer, selection, step)
    try:
        initial_metrics = loop.validate_at_start(state, step) if cfg.eval_at_start else None
        state, loader, step = loop.steps(state, loader, step, hooks)
    except KeyboardInterrupt:
        loop.interrupted()
        raise
    except BaseException:
        loop.bar.close()
        checkpointer.close()
        raise
    interrupts.raise_if_requested()  # after the last step, before the (last) validation
    state, best_step, test_metrics, test_outputs = loop.finish(state, loader, step, state_target)
    interrupts.raise_if_requested()  # the last step is saved; stop before the exports

    if jax.process_index() == 0:
        run.task.write_predictions(os.path.join(workdir, "predictions.jsonl"), run.test_data, test_outputs)
    exported = _export(run, workdir, state, best_step) if cfg.export else {}
    if cfg.plot:
        reporting.plot_learning_curves(os.path.join(workdir, "metrics.jsonl"),
                                       os.path.join(workdir, "learning_curves.png"), run.metric_name,
                                       title=f"{run.method.name} on {run.task.display_name}")
    best = selection.best_metric
    results = {
        "task": run.task.name,
        "variant": run.method.name,
        "model": cfg.model,
        "metric_name": run.metric_name,
        "test_metric": float(test_metrics[run.metric_name]),
        "test_metrics": test_metrics,
        "best_step": int(best_step),
        "best_validation_metric": best if math.isfinite(best) else None,
        "initial_validation_metrics": initial_metrics,  # step 0, before training (config.eval_at_start)
        "steps": int(step),
        "stopped_early": loop.stopped_early(),
        "total_steps": run.total_steps,
        "trainable_params": int(run.param_counts.trainable),
        "param_counts": run.param_counts._asdict(),
        **loop.clock.summary(),
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
