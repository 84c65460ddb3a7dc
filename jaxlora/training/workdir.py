"""The output folder of a run: named by default, checked writable up front, never destroyed by a rerun.

A run writes everything into one workdir: ``checkpoints/``, ``metrics.jsonl``, ``results.json``,
``predictions.jsonl``, ``learning_curves.png``, ``adapter/`` and ``peft_adapter/`` (or ``model/``).

* :func:`default_workdir`: ``runs/<config name>`` with the config's options, so
  ``--config configs/condlora_sst2.py:offline`` writes to ``runs/condlora_sst2_offline``;
* :func:`prepare`: creates the folder and writes a probe file into it, so a read-only or
  file-shaped workdir is one clear error before any model loads, not an errno after;
* :func:`move_outputs_to_previous`: starting over (``config.resume=False``) first moves the
  previous run's outputs into ``previous/<timestamp>/``; nothing is deleted or overwritten;
* :func:`run_identity` / :func:`check_same_run`: what makes checkpoints resumable by a config
  (task, variant, model, batch size, every adapter option); checkpoints of another run are
  refused naming the differing fields, before anything loads or moves.

>>> default_workdir("configs/condlora_sst2.py:offline")
'runs/condlora_sst2_offline'
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Mapping

from jaxlora import errors

__all__ = ["OUTPUTS", "default_workdir", "prepare", "previous_outputs", "move_outputs_to_previous", "run_identity",
           "identity_differences", "check_same_run"]

# Everything a run writes into its workdir (the names a rerun must never clobber).
OUTPUTS = ("checkpoints", "metrics.jsonl", "results.json", "predictions.jsonl", "learning_curves.png",
           "adapter", "peft_adapter", "model")


def default_workdir(config_spec: str, root: str = "runs") -> str:
    """``<root>/<config file stem>[_<option>...]`` for a ``--config`` value ``path/name.py[:options]``.

    >>> default_workdir("configs/lora_sst2.py")
    'runs/lora_sst2'
    >>> default_workdir("configs/lora_sst2.py:offline,rte")
    'runs/lora_sst2_offline_rte'
    """
    path, _, options = str(config_spec).partition(":")
    stem = os.path.splitext(os.path.basename(path))[0] or "run"
    parts = [stem] + [o.strip() for o in options.split(",") if o.strip()]
    name = re.sub(r"[^A-Za-z0-9._=-]+", "-", "_".join(parts))
    return os.path.join(root, name)


def prepare(workdir: str | os.PathLike) -> str:
    """Create ``workdir`` (absolute path returned) and prove it writable, or raise :class:`~jaxlora.errors.WorkdirError`.

    >>> import tempfile
    >>> folder = prepare(os.path.join(tempfile.mkdtemp(), "run"))
    >>> os.listdir(folder)
    []
    >>> prepare(folder) == folder   # an existing, writable folder is fine
    True
    """
    workdir = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
    hint = "Pass a writable folder with --workdir (or fix its permissions)."
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise errors.WorkdirError(f"The workdir {workdir} is a file, not a folder.", hint, path=workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".jaxlora-write-probe-{os.getpid()}")
        with open(probe, "wb") as file:
            file.write(b"ok")
        os.remove(probe)
    except OSError as err:
        known = errors.from_os_error(err, "the workdir", workdir)
        if known is not None:
            raise known from None
        raise errors.WorkdirError(f"Cannot create or write the workdir {workdir}: {err.strerror or err}.", hint,
                                  path=workdir) from None
    return workdir


def previous_outputs(workdir: str | os.PathLike) -> list[str]:
    """The run outputs (see :data:`OUTPUTS`) present in ``workdir``, in that order.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp(); open(os.path.join(folder, "results.json"), "w").close()
    >>> previous_outputs(folder)
    ['results.json']
    """
    return [name for name in OUTPUTS if os.path.lexists(os.path.join(os.fspath(workdir), name))]


def move_outputs_to_previous(workdir: str | os.PathLike, now: float | None = None,
                             exclude: tuple[str, ...] = ()) -> str | None:
    """Move the previous run's outputs into ``workdir/previous/<timestamp>/``; return that folder (None: nothing).

    Renames within one folder are atomic and cost nothing, whatever the checkpoints weigh. Names
    in ``exclude`` stay (e.g. ``checkpoints`` while a checkpointer has it open).

    >>> import tempfile
    >>> folder = tempfile.mkdtemp(); open(os.path.join(folder, "metrics.jsonl"), "w").close()
    >>> moved = move_outputs_to_previous(folder, now=0)
    >>> os.path.relpath(moved, folder), os.listdir(moved), previous_outputs(folder)
    ('previous/19700101-000000', ['metrics.jsonl'], [])
    """
    workdir = os.fspath(workdir)
    names = [name for name in previous_outputs(workdir) if name not in exclude]
    if not names:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    target = os.path.join(workdir, "previous", stamp)
    suffix = 1
    while os.path.exists(target):  # two restarts within a second
        target, suffix = os.path.join(workdir, "previous", f"{stamp}-{suffix}"), suffix + 1
    os.makedirs(target)
    for name in names:
        os.rename(os.path.join(workdir, name), os.path.join(target, name))
    return target


def run_identity(task: str, variant: str, model: str, batch_size: int, adapter: Mapping[str, Any] | None) -> dict:
    """The fields a checkpoint must share with a config to be resumed by it (JSON-normalised).

    ``adapter`` is ``AdapterConfig.to_dict()`` (None for full fine-tuning): its rank, targets,
    alpha, patterns... all decide what the saved state means.

    >>> run_identity("sst2", "lora", "minilm-l6", 32, {"rank": 8, "targets": ("query", "value")})["adapter"]
    {'rank': 8, 'targets': ['query', 'value']}
    """
    identity = {"task": task, "variant": variant, "model": model, "batch_size": int(batch_size), "adapter": adapter}
    return json.loads(json.dumps(identity))


def identity_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"field: saved -> current"`` for each identity field that differs (fields a checkpoint lacks are skipped).

    >>> saved = run_identity("sst2", "lora", "minilm-l6", 32, {"rank": 8, "alpha": 8.0})
    >>> identity_differences(saved, run_identity("sst2", "lora", "minilm-l6", 32, {"rank": 16, "alpha": 8.0}))
    ['lora.rank: 8 in the checkpoints, 16 in this config']
    """
    problems = []
    for key in ("task", "variant", "model", "batch_size"):
        if key in saved and saved[key] != current.get(key):
            problems.append(f"{key}: {saved[key]!r} in the checkpoints, {current.get(key)!r} in this config")
    old, new = saved.get("adapter"), current.get("adapter")
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                problems.append(f"lora.{key}: {old.get(key)!r} in the checkpoints, {new.get(key)!r} in this config")
    return problems


def check_same_run(saved: Mapping[str, Any], current: Mapping[str, Any], directory: str) -> None:
    """Raise :class:`~jaxlora.errors.IncompatibleCheckpointError` when ``saved`` is another run's identity.

    >>> saved = run_identity("sst2", "lora", "minilm-l6", 32, {"rank": 8})
    >>> check_same_run(saved, run_identity("rte", "lora", "minilm-l6", 32, {"rank": 8}), "runs/x/checkpoints")
    Traceback (most recent call last):
    jaxlora.errors.IncompatibleCheckpointError: The checkpoints in runs/x/checkpoints are from another run (task: 'sst2' in the checkpoints, 'rte' in this config). Use a new --workdir for this config, or --config.resume=False to start over (the old outputs move to <workdir>/previous/<time>/).
    """
    problems = identity_differences(saved, current)
    if problems:
        raise errors.IncompatibleCheckpointError(
            f"The checkpoints in {directory} are from another run ({'; '.join(problems)}).",
            "Use a new --workdir for this config, or --config.resume=False to start over "
            "(the old outputs move to <workdir>/previous/<time>/).",
            path=directory,
        )
