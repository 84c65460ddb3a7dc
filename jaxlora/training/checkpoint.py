"""Checkpoints with orbax: everything needed to resume exactly, never the frozen weights, each one verified.

A checkpoint of step ``n`` is one orbax step directory with two items:

* ``state``: the :class:`~jaxlora.training.loop.TrainState` pytree (step, adapter trainable and
  fixed parts, optimiser state, RNG key data), saved with ``StandardSave`` and restored onto the
  run's shardings with ``StandardRestore``;
* ``meta``: a JSON document with the data loader position (:class:`jaxlora.data.LoaderState`),
  the validation metrics of that step (if it was evaluated), the best step so far, and the
  state's **digest**: for every leaf its dtype, shape and a SHA-256 of its bytes.

The frozen model is rebuilt from its source (a preset or Hugging Face folder) on every start, so a
checkpoint of a LoRA run on RoBERTa-base is a few megabytes, not half a gigabyte.

Why a digest. Orbax writes each step into a temporary directory and renames it when complete, so
a crash mid-write leaves no half checkpoint; but a committed step can still rot (a flipped bit on
disk, a bad copy). Damage that no longer decodes raises on restore; damage that still decodes does
not, and would be resumed silently. So every restore hashes the arrays it got back and compares
them with the digest written at save time. A step that is unreadable or does not match is moved
aside into ``<dir>/corrupt/<step>`` with a warning naming it, and the next older step is tried.

What is *not* corruption: intact checkpoints of another run (another rank, targets, model...).
Their leaves have other shapes than the run's state; that is an
:class:`~jaxlora.errors.IncompatibleCheckpointError` naming the differing leaves, and nothing is
moved.

Retention is orbax's preservation policy: the latest ``keep`` steps, plus the best step by the
validation metric.

>>> import tempfile, jax.numpy as jnp
>>> ckpt = Checkpointer(tempfile.mkdtemp(), keep=2, async_save=False)
>>> state = {"w": jnp.ones((2, 3))}
>>> ckpt.save(10, state, {"loader": [0, 10, 0]}, metric=0.8)
True
>>> restored = ckpt.restore_latest(abstract_like(state))
>>> restored.step, restored.verified, restored.meta["loader"]
(10, True, [0, 10, 0])
>>> ckpt.close()
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxlora import errors
from jaxlora.interop import digest as digest_lib

__all__ = ["Checkpointer", "Restored", "abstract_like", "state_digest", "shape_mismatches", "digest_mismatches", "DIGEST_KEY"]

log = logging.getLogger("jaxlora.training")

_METRIC = "validation"
DIGEST_KEY = "digest"  # meta[DIGEST_KEY]: {"algorithm": "sha256", "leaves": {path: "dtype[shape]:hex"}}
_ALGORITHM = digest_lib.ALGORITHM


class Restored(NamedTuple):
    """A restored checkpoint: the state pytree, its JSON metadata, its step, and whether its digest matched."""

    state: Any
    meta: dict
    step: int
    verified: bool


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """``ShapeDtypeStruct`` leaves (carrying ``shardings`` when given): the restore target of a tree.

    >>> import jax.numpy as jnp
    >>> abstract_like({"w": jnp.ones((2, 3))})["w"]
    ShapeDtypeStruct(shape=(2, 3), dtype=float32)
    """
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# --------------------------------------------------------------------------------------------
# Digests


def _paths(tree: Any) -> dict[str, Any]:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def state_digest(tree: Any) -> dict[str, str]:
    """``{leaf path: "dtype[shape]:sha256"}`` of a state pytree (see :mod:`jaxlora.interop.digest`).

    The arrays are hashed as the bytes a restore gives back, so a save and a restore of the same
    values agree whatever the sharding.

    >>> import jax.numpy as jnp
    >>> d = state_digest({"w": jnp.zeros((2, 3))})
    >>> list(d), d["['w']"].split(":")[0]
    (["['w']"], 'float32[2,3]')
    >>> d == state_digest({"w": jnp.zeros((2, 3)).at[1, 2].set(1e-30)})
    False
    """
    return digest_lib.tree_digest(tree)


def shape_mismatches(expected: Mapping[str, str], target: Any) -> list[str]:
    """Leaves whose dtype/shape in a digest differ from ``target``'s, or that only one side has.

    >>> import jax.numpy as jnp
    >>> saved = state_digest({"w": jnp.zeros((8, 3))})
    >>> shape_mismatches(saved, {"w": jax.ShapeDtypeStruct((16, 3), jnp.float32)})
    ["['w']: saved float32[8,3], this run float32[16,3]"]
    """
    return digest_lib.shape_mismatches(expected, _paths(target))


def digest_mismatches(expected: Mapping[str, str], tree: Any) -> list[str]:
    """Leaf paths of ``tree`` whose bytes do not match the digest ``expected`` (empty: all match).

    >>> import jax.numpy as jnp
    >>> saved = state_digest({"a": jnp.ones(3), "b": jnp.ones(2)})
    >>> digest_mismatches(saved, {"a": jnp.ones(3), "b": jnp.array([1.0, 2.0])})
    ["['b']"]
    """
    return digest_lib.mismatches(expected, state_digest(tree))


# --------------------------------------------------------------------------------------------
# The checkpointer


def _nbytes(tree: Any) -> int:
    return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))


def _os_error_in(err: BaseException) -> OSError | None:
    # orbax/tensorstore wrap the write error of a background thread: look down the chain. Tensorstore
    # reports the errno in its message ("... File too large [os_error_code='27']"), not as an OSError.
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        code = re.search(r"os_error_code='?(\d+)", str(err))
        if code:
            return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
        if "No space left on device" in str(err) or "ENOSPC" in str(err):
            return OSError(errno.ENOSPC, "No space left on device")
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


class Checkpointer:
    """An orbax ``CheckpointManager`` that keeps the latest ``keep`` steps plus the best by validation.

    Args:
      directory: where step directories go (created).
      keep: how many of the latest checkpoints to keep.
      async_save: write in a background thread; :meth:`wait` blocks until written.
      verify: write a digest of the state with each step and check it on restore.

    >>> import tempfile, jax.numpy as jnp
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), keep=1, async_save=False)
    >>> [ckpt.save(step, {"w": jnp.full(2, step)}, {"loader": [0, step, 0]}) for step in (1, 2)]
    [True, True]
    >>> ckpt.steps, ckpt.verified_steps
    ([2], [2])
    >>> ckpt.close()
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2, async_save: bool = True, verify: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self.verify = bool(verify)
        self._verified: set[int] = set()  # steps saved with a digest by this process, or restored and matched
        self._pending_bytes = (0, -1)  # (bytes, step) of the last save, for a disk-full message
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
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        except OSError as err:
            raise (errors.from_os_error(err, "checkpoints", self.directory) or err) from None

    @property
    def steps(self) -> list[int]:
        """Committed steps, oldest first."""
        return sorted(self._manager.all_steps())

    @property
    def verified_steps(self) -> list[int]:
        """Committed steps known good: saved with a digest by this checkpointer, or restored and matched."""
        return [s for s in self.steps if s in self._verified]

    def save(self, step: int, state: Any, meta: Mapping[str, Any], metric: float | None = None) -> bool:
        """Save ``state`` and ``meta`` (plus the state's digest) as step ``step``; ``metric``: its validation value.

        Returns False (and saves nothing) when ``step`` is already saved. A full disk raises
        :class:`~jaxlora.errors.DiskFullError` saying how much was being written and where.

        >>> import tempfile, jax.numpy as jnp
        >>> ckpt = Checkpointer(tempfile.mkdtemp(), async_save=False)
        >>> ckpt.save(3, {"w": jnp.ones(2)}, {"loader": [0, 3, 0]}, metric=0.5), ckpt.save(3, {"w": jnp.ones(2)}, {})
        (True, False)
        >>> ckpt.close()
        """
        step = int(step)
        if step in self._manager.all_steps():
            return False
        meta = dict(meta)
        if self.verify:
            meta[DIGEST_KEY] = {"algorithm": _ALGORITHM, "leaves": state_digest(state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        metrics = None if metric is None else {_METRIC: float(metric)}
        try:  # the previous step's background write ends here: a failure of it is named as that step's
            self._manager.wait_until_finished()
        except Exception as err:
            raise self._write_error(err) from None
        self._pending_bytes = (_nbytes(state), step)
        try:
            saved = bool(self._manager.save(step, args=args, metrics=metrics, force=True))
        except Exception as err:
            raise self._write_error(err) from None
        if saved and self.verify:
            self._verified.add(step)
        return saved

    def _write_error(self, err: BaseException) -> BaseException:
        os_error = _os_error_in(err)
        if os_error is None:
            return err
        size, step = self._pending_bytes
        return errors.from_os_error(os_error, f"checkpoint step {step}", self.directory, size) or err

    def _read_meta(self, step: int) -> dict:
        try:
            out = self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = out["meta"]
        except Exception as err:  # orbax/tensorstore raise many types for a damaged step
            raise errors.CorruptCheckpointError(
                f"The metadata of checkpoint step {step} in {self.directory} is unreadable ({_first_line(err)}).",
                path=os.path.join(self.directory, str(step)),
            ) from err
        if not isinstance(meta, dict):
            raise errors.CorruptCheckpointError(
                f"The metadata of checkpoint step {step} in {self.directory} is not a JSON object.",
                path=os.path.join(self.directory, str(step)),
            )
        return dict(meta)

    def newest_meta(self) -> dict | None:
        """The metadata of the newest step whose metadata reads (None: no such step); reads no arrays.

        >>> import tempfile, jax.numpy as jnp
        >>> ckpt = Checkpointer(tempfile.mkdtemp(), async_save=False)
        >>> ckpt.save(4, {"w": jnp.ones(2)}, {"task": "sst2"})
        True
        >>> ckpt.newest_meta()["task"]
        'sst2'
        >>> ckpt.close()
        """
        self.wait()
        for step in reversed(self.steps):
            try:
                return self._read_meta(step)
            except errors.CorruptCheckpointError:
                continue  # restore_latest quarantines it
        return None

    def restore(self, step: int, target: Any, check_meta: Callable[[dict], None] | None = None) -> Restored:
        """Restore step ``step`` onto ``target`` (see :func:`abstract_like`), checking its digest.

        Args:
          step: the step to restore.
          target: the abstract state (shapes, dtypes, shardings).
          check_meta: called with the step's metadata before the state is read; it raises
            :class:`~jaxlora.errors.IncompatibleCheckpointError` for another run's checkpoint, or
            :class:`~jaxlora.errors.CorruptCheckpointError` for metadata that cannot be right.

        Raises:
          IncompatibleCheckpointError: the saved leaves have other shapes than ``target`` (never corruption).
          CorruptCheckpointError: the step is unreadable or its arrays do not match its digest.

        >>> import tempfile, jax.numpy as jnp
        >>> ckpt = Checkpointer(tempfile.mkdtemp(), async_save=False)
        >>> ckpt.save(1, {"w": jnp.ones((8, 2))}, {"loader": [0, 1, 0]})
        True
        >>> ckpt.restore(1, abstract_like({"w": jnp.ones((8, 2))})).verified
        True
        >>> ckpt.restore(1, abstract_like({"w": jnp.ones((16, 2))}))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        jaxlora.errors.IncompatibleCheckpointError: Checkpoint step 1 in ... holds a state of other shapes than this run's: ['w']: saved float32[8,2], this run float32[16,2]. ...
        >>> ckpt.close()
        """
        self.wait()
        step = int(step)
        where = os.path.join(self.directory, str(step))
        meta = self._read_meta(step)
        if check_meta is not None:
            check_meta(meta)
        digest = meta.get(DIGEST_KEY)
        leaves = digest.get("leaves") if isinstance(digest, dict) else None
        if digest is not None and (not isinstance(leaves, dict) or digest.get("algorithm") != _ALGORITHM):
            raise errors.CorruptCheckpointError(f"The digest in the metadata of checkpoint step {step} is malformed.",
                                                path=where)
        if leaves is not None:
            shapes = shape_mismatches(leaves, target)
            if shapes:
                raise errors.IncompatibleCheckpointError(
                    f"Checkpoint step {step} in {self.directory} holds a state of other shapes than this run's: "
                    f"{'; '.join(shapes[:4])}{f' (and {len(shapes) - 4} more)' if len(shapes) > 4 else ''}.",
                    "Use a new --workdir for this config, or --config.resume=False to start over "
                    "(the old outputs move to <workdir>/previous/).",
                    path=where,
                )
        try:
            out = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            )
            state = out["state"]
        except Exception as err:  # orbax/tensorstore raise many types for a damaged step
            raise errors.CorruptCheckpointError(
                f"Checkpoint step {step} in {self.directory} is unreadable ({_first_line(err)}).", path=where
            ) from err
        verified = False
        if self.verify and leaves is not None:
            bad = digest_mismatches(leaves, state)
            if bad:
                raise errors.CorruptCheckpointError(
                    f"Checkpoint step {step} in {self.directory} does not match its digest: {len(bad)} "
                    f"array(s) differ from what was saved ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}).",
                    path=where,
                )
            verified = True
            self._verified.add(step)
        elif self.verify:
            log.warning("Checkpoint step %d in %s has no digest (written by an older jaxlora): restored unverified.",
                        step, self.directory)
        return Restored(state, meta, step, verified)

    def restore_latest(self, target: Any, check_meta: Callable[[dict], None] | None = None) -> Restored | None:
        """The newest good checkpoint, or None when there is none.

        A corrupt step (unreadable, or not matching its digest) is moved to ``<directory>/corrupt/<step>``
        with a warning naming it and the step tried instead. An incompatible one (another run's, see
        :meth:`restore`) raises at once and nothing is moved.

        >>> import tempfile, jax.numpy as jnp
        >>> ckpt = Checkpointer(tempfile.mkdtemp(), async_save=False)
        >>> ckpt.restore_latest(abstract_like({"w": jnp.ones(2)})) is None
        True
        >>> ckpt.close()
        """
        self.wait()
        for step in reversed(self.steps):
            try:
                return self.restore(step, target, check_meta)
            except errors.CorruptCheckpointError as err:
                older = [s for s in self.steps if s < step]
                fallback = f"falling back to step {older[-1]}" if older else "no older checkpoint: starting from scratch"
                log.warning("%s Moved it to %s; %s.", err.message, os.path.join(self.directory, "corrupt", str(step)),
                            fallback)
                self._quarantine(step)
        return None

    def _quarantine(self, step: int) -> None:
        source = os.path.join(self.directory, str(step))
        target_dir = os.path.join(self.directory, "corrupt")
        os.makedirs(target_dir, exist_ok=True)
        target = os.path.join(target_dir, str(step))
        if os.path.exists(target):  # an earlier quarantine of the same step number: keep both
            suffix = 1
            while os.path.exists(f"{target}.{suffix}"):
                suffix += 1
            target = f"{target}.{suffix}"
        if os.path.exists(source) and jax.process_index() == 0:  # one process moves, the others wait
            shutil.move(source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint step {step} set aside")
        self._verified.discard(step)
        self._manager.reload()

    def wait(self) -> None:
        """Block until background writes are committed (a full disk raises :class:`~jaxlora.errors.DiskFullError`).

        >>> import tempfile
        >>> Checkpointer(tempfile.mkdtemp()).wait()
        """
        try:
            self._manager.wait_until_finished()
        except Exception as err:
            raise self._write_error(err) from None

    def close(self) -> None:
        """Finish writes and release the manager.

        >>> import tempfile
        >>> Checkpointer(tempfile.mkdtemp()).close()
        """
        try:
            self.wait()
        finally:
            self._manager.close()
