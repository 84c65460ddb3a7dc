"""User errors: what the user got wrong, in one line, and what to do about it.

Library code raises a :class:`UserError` when the cause is outside jaxlora: a config value, a data
file, a model folder, a checkpoint from another run, a workdir that cannot be written, a full disk.
Each carries a ``message`` (what is wrong, naming the file and line where there is one) and a
``hint`` (how to fix it). ``train.py`` prints exactly those two lines and exits with status 2;
anything else is a bug in jaxlora and keeps its traceback.

Every subclass also derives from the standard exception a caller would have caught before
(``ValueError``, ``OSError``, ...), so ``except ValueError`` around a jaxlora call keeps working.

This module is the bottom layer: it imports nothing from jaxlora, so every layer can raise these.

>>> err = ConfigError("config.lora.alpha=0 scales every update to zero.", "Use a positive alpha, e.g. 8.")
>>> print(one_line(err))
error: config.lora.alpha=0 scales every update to zero.
hint: Use a positive alpha, e.g. 8.
>>> isinstance(err, ValueError), isinstance(err, UserError)
(True, True)
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "UserError",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "HubUnreachableError",
    "CheckpointError",
    "CorruptCheckpointError",
    "IncompatibleCheckpointError",
    "WorkdirError",
    "DiskFullError",
    "TrainingStoppedError",
    "UnknownTopologyError",
    "DoesNotFitError",
    "one_line",
    "from_os_error",
    "size_text",
]


class UserError(Exception):
    """A mistake or fault outside jaxlora, with a one-line ``message`` and a one-line ``hint``.

    Args:
      message: what is wrong; names the file (and line) when there is one.
      hint: what to do about it ("" when the message says it all).
      path: the file or folder concerned, when there is one (for programs that want it).

    >>> err = UserError("runs/x is a file, not a folder.", "Pass a folder to --workdir.", path="runs/x")
    >>> str(err)
    'runs/x is a file, not a folder. Pass a folder to --workdir.'
    >>> err.path
    'runs/x'
    """

    def __init__(self, message: str, hint: str = "", *, path: str | os.PathLike | None = None):
        self.message = " ".join(str(message).split())  # one line, whatever the caller's formatting
        self.hint = " ".join(str(hint).split())
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.message} {self.hint}".strip())

    def __reduce__(self):  # keeps message/hint/path through pickling (multiprocessing, pytest-xdist)
        return _rebuild, (type(self), self.message, self.hint, self.path)


def _rebuild(cls, message, hint, path):
    return cls(message, hint, path=path)


class ConfigError(UserError, ValueError):
    """A config field has a value the run cannot use (named as ``config.<path>=<value>``).

    >>> raise ConfigError("config.optimizer.learning_rate=-0.001 must be positive.", "Use e.g. 1e-4.")
    Traceback (most recent call last):
    jaxlora.errors.ConfigError: config.optimizer.learning_rate=-0.001 must be positive. Use e.g. 1e-4.
    """


class DataError(UserError, ValueError):
    """A data file cannot be used as given: unreadable text, a malformed line, a label out of range.

    >>> DataError("train.tsv line 3: label 7 is not one of 0, 1.", path="train.tsv").path
    'train.tsv'
    """


class ModelLoadError(UserError, ValueError):
    """A model or weights file cannot be loaded: truncated, not what it claims, or unsafe to unpickle.

    >>> str(ModelLoadError("model.safetensors is truncated.", "Download it again."))
    'model.safetensors is truncated. Download it again.'
    """


class HubUnreachableError(UserError, ConnectionError):
    """Something had to come from the Hugging Face hub, and the hub cannot be reached.

    >>> isinstance(HubUnreachableError("huggingface.co is unreachable."), OSError)
    True
    """


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be used (the base of the two kinds below).

    >>> issubclass(CorruptCheckpointError, CheckpointError), issubclass(IncompatibleCheckpointError, CheckpointError)
    (True, True)
    """


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's bytes are damaged: unreadable, or not matching the digest written with it.

    The checkpointer moves such a step aside and falls back to the previous one; it is raised to the
    caller only when asked to restore that one step.

    >>> CorruptCheckpointError("step 16: 1 leaf differs from its digest.", path="ckpt/16").path
    'ckpt/16'
    """


class IncompatibleCheckpointError(CheckpointError):
    """Intact checkpoints of another run (another adapter shape, model, task...): never corruption.

    >>> str(IncompatibleCheckpointError("runs/x holds rank=8, this config has rank=16.", "Use a new --workdir."))
    'runs/x holds rank=8, this config has rank=16. Use a new --workdir.'
    """


class WorkdirError(UserError, OSError):
    """The output folder cannot be created or written.

    >>> isinstance(WorkdirError("runs/x is read-only."), OSError)
    True
    """


class DiskFullError(UserError, OSError):
    """The disk (or a file-size limit) filled up while writing; the message says how much was being written and where.

    ``errno`` is ``ENOSPC`` (or ``EDQUOT``, a quota; ``EFBIG``, a file larger than the file system or
    ``ulimit -f`` allows).

    >>> DiskFullError("No space left writing 3.0 MB to runs/x/checkpoints.").errno == errno.ENOSPC
    True
    """

    def __init__(self, message: str, hint: str = "", *, path: str | os.PathLike | None = None,
                 code: int = errno.ENOSPC):
        super().__init__(message, hint, path=path)
        self.errno = code


class TrainingStoppedError(UserError, FloatingPointError):
    """Training stopped on purpose because it cannot succeed: a NaN/inf loss, or a diverging one.

    >>> isinstance(TrainingStoppedError("The loss is nan at step 17."), FloatingPointError)
    True
    """


class UnknownTopologyError(UserError, ValueError):
    """A plan names a TPU topology (or needs a compiler) that is not available; the message lists the known ones.

    >>> isinstance(UnknownTopologyError("Unknown TPU topology 'v9-8'."), ValueError)
    True
    """


class DoesNotFitError(UserError, MemoryError):
    """A planned run needs more memory per chip than the chip has: by how much, and which knob saves most.

    >>> isinstance(DoesNotFitError("Needs 20.1 GiB per chip, 16.0 GiB available."), MemoryError)
    True
    """


def one_line(err: BaseException) -> str:
    """``error: <message>`` and, when there is one, ``hint: <hint>`` on a second line.

    Any other exception prints as its type and its first line (used for the ``OSError`` family).

    >>> print(one_line(WorkdirError("runs/x is read-only.", "Choose a writable --workdir.")))
    error: runs/x is read-only.
    hint: Choose a writable --workdir.
    >>> one_line(KeyError("rank"))
    "error: KeyError: 'rank'"
    """
    if isinstance(err, UserError):
        return f"error: {err.message}" + (f"\nhint: {err.hint}" if err.hint else "")
    text = (str(err).splitlines() or [""])[0]
    return f"error: {type(err).__name__}: {text}".rstrip(": ")


def size_text(num_bytes: float) -> str:
    """A byte count for people: ``"3.2 MB"``.

    >>> size_text(3_200_000), size_text(512), size_text(2.5e9)
    ('3.2 MB', '512 B', '2.5 GB')
    """
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{int(num_bytes)} B"


def _free_bytes(path: str) -> int | None:
    import shutil

    probe = os.path.abspath(path)
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    try:
        return shutil.disk_usage(probe or "/").free
    except OSError:
        return None


def from_os_error(err: OSError, what: str, path: str | os.PathLike, num_bytes: int | None = None) -> UserError | None:
    """The :class:`UserError` of an ``OSError`` a user can fix (disk full, read-only, no permission), else None.

    Args:
      err: the error raised while writing.
      what: what was being written, e.g. ``"checkpoint step 12"``.
      path: where it was being written.
      num_bytes: how much was being written, when known (a disk-full message says it).

    >>> import errno
    >>> err = from_os_error(OSError(errno.ENOSPC, "No space left on device"), "metrics", "runs/x/metrics.jsonl", 120)
    >>> type(err).__name__, err.message.startswith("No space left on device writing metrics (120 B) to runs/x/")
    ('DiskFullError', True)
    >>> from_os_error(OSError(errno.EIO, "I/O error"), "metrics", "runs/x") is None
    True
    >>> from_os_error(OSError(errno.EFBIG, "File too large"), "metrics", "runs/x", 120).message.startswith(
    ...     "File too large writing metrics (120 B) to runs/x: a file grew past")
    True
    """
    path = os.fspath(path)
    amount = f" ({size_text(num_bytes)})" if num_bytes is not None else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(path)
        left = f"; {size_text(free)} free there now" if free is not None else ""
        return DiskFullError(
            f"No space left on device writing {what}{amount} to {path}{left}.",
            "Free some space (old runs, caches) or choose another --workdir, then rerun: it resumes.",
            path=path, code=err.errno,
        )
    if err.errno == errno.EFBIG:
        return DiskFullError(
            f"File too large writing {what}{amount} to {path}: a file grew past the largest size this file "
            "system or the process's file-size limit (ulimit -f) allows.",
            "Raise the limit (ulimit -f unlimited) or choose a --workdir on another file system, then rerun: it resumes.",
            path=path, code=err.errno,
        )
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return WorkdirError(
            f"Cannot write {what} to {path}: {err.strerror or err}.",
            "Choose a writable --workdir (or fix the folder's permissions).",
            path=path,
        )
    return None
