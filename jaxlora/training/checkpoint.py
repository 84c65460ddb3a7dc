"""Checkpoints with orbax: everything needed to resume exactly, and never the frozen weights.

A checkpoint of step ``n`` is one orbax step directory with two items:

* ``state``: the :class:`~jaxlora.training.loop.TrainState` pytree (step, adapter trainable and
  fixed parts, optimiser state, RNG key data), saved with ``StandardSave`` and restored onto the
  run's shardings with ``StandardRestore``;
* ``meta``: a JSON document with the data loader position (:class:`jaxlora.data.LoaderState`),
  the validation metrics of that step (if it was evaluated) and the best step so far.

The frozen model is rebuilt from its source (a preset or Hugging Face folder) on every start, so a
checkpoint of a LoRA run on RoBERTa-base is a few megabytes, not half a gigabyte.

Retention is orbax's preservation policy: the latest ``keep`` steps, plus the best step by the
validation metric. Orbax writes each step into a temporary directory and renames it when complete,
so a crash mid-write leaves no half checkpoint that looks valid. A committed step that later turns
out unreadable (a truncated file, a disk error) is moved aside into ``<dir>/corrupt/`` and the next
older step is restored, with a warning that says so.

Example::

    ckpt = Checkpointer(workdir / "checkpoints", keep=2)
    ckpt.save(step, state, {"loader": list(loader_state)}, metric=0.91)
    restored = ckpt.restore_latest(abstract_state)     # None when there is nothing to resume
    if restored is not None:
        state, meta, step = restored
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Mapping, NamedTuple

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

__all__ = ["Checkpointer", "Restored", "abstract_like"]

log = logging.getLogger("jaxlora.training")

_METRIC = "validation"


class Restored(NamedTuple):
    """A restored checkpoint: the state pytree, its JSON metadata, and its step."""

    state: Any
    meta: dict
    step: int


def abstract_like(tree: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` leaves carrying ``shardings``: the restore target of a tree.

    Example::

        target = abstract_like(state, state_shardings)
    """
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
    """An orbax ``CheckpointManager`` that keeps the latest ``keep`` steps plus the best by validation.

    Args:
      directory: where step directories go (created).
      keep: how many of the latest checkpoints to keep.
      async_save: write in a background thread; :meth:`wait` blocks until written.

    Example::

        ckpt = Checkpointer("runs/x/checkpoints", keep=2)
        ckpt.save(10, state, {"loader": [0, 10, 0]}, metric=0.8)
        ckpt.wait()
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        policy = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(n=int(keep)),
            checkpoint_managers.BestN(
                get_metric_fn=lambda metrics: metrics[_METRIC],
                reverse=False,  # ascending: the highest metric is kept
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            # best_fn makes orbax write each step's metrics to disk, so a resumed run still knows the best.
            best_fn=lambda metrics: metrics[_METRIC],
            best_mode="max",
            keep_checkpoints_without_metrics=True,
            enable_async_checkpointing=bool(async_save),
            create=True,
            cleanup_tmp_directories=True,  # leftovers of a crash mid-write are removed, never read
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    @property
    def steps(self) -> list[int]:
        """Committed steps, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: Mapping[str, Any], metric: float | None = None) -> bool:
        """Save ``state`` and ``meta`` as step ``step`` (``metric``: its validation value, if evaluated).

        Returns False (and saves nothing) when ``step`` is already saved.

        Example::

            ckpt.save(int(state.step), state, {"loader": list(loader_state)}, metric=accuracy)
        """
        step = int(step)
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta)))
        metrics = None if metric is None else {_METRIC: float(metric)}
        return bool(self._manager.save(step, args=args, metrics=metrics, force=True))

    def restore(self, step: int, target: Any) -> Restored:
        """Restore step ``step`` onto ``target`` (see :func:`abstract_like`).

        Example::

            state, meta, _ = ckpt.restore(best_step, abstract_like(state, shardings))
        """
        self.wait()
        out = self._manager.restore(
            int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        )
        return Restored(out["state"], dict(out["meta"]), int(step))

    def restore_latest(self, target: Any) -> Restored | None:
        """The newest readable checkpoint, or None when there is none.

        An unreadable step is moved to ``<directory>/corrupt/<step>`` with a warning naming it and the
        step used instead, so the run resumes from the previous good checkpoint.

        Example::

            restored = ckpt.restore_latest(abstract_like(state, shardings))
        """
        self.wait()
        for step in reversed(self.steps):
            try:
                return self.restore(step, target)
            except Exception as err:  # orbax/tensorstore raise many types for a damaged step
                older = [s for s in self.steps if s < step]
                where = f"falling back to step {older[-1]}" if older else "no older checkpoint: starting from scratch"
                message = (
                    f"Checkpoint step {step} in {self.directory} is unreadable "
                    f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); "
                    f"moved it to {os.path.join(self.directory, 'corrupt', str(step))}; {where}."
                )
                log.warning(message)
                self._quarantine(step)
        return None

    def _quarantine(self, step: int) -> None:
        source = os.path.join(self.directory, str(step))
        target_dir = os.path.join(self.directory, "corrupt")
        os.makedirs(target_dir, exist_ok=True)
        target = os.path.join(target_dir, str(step))
        if os.path.exists(target):
            shutil.rmtree(target)
        if os.path.exists(source):
            shutil.move(source, target)
        self._manager.reload()

    def wait(self) -> None:
        """Block until background writes are committed.

        Example::

            ckpt.wait()
        """
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish writes and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
