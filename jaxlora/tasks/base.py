"""The task interface: what the training loop asks of a task kind, and the registry of kinds.

The loop (:mod:`jaxlora.training`) knows no task. It asks the task object of a run, built once
from the config by :func:`from_config`, for everything task-shaped:

==========================================  ===================================================
``name``, ``display_name``                  results.json / checkpoint meta, and logs
``metric_name``                             the validation metric checkpoints maximise
                                            (higher is better)
``default_epochs``                          epochs when ``config.num_epochs`` is 0
``device_keys``                             the batch keys a step reads (put on the devices);
                                            the model takes the subset its family names in
                                            ``input_names``
``model_head()``                            keyword arguments of
                                            :func:`jaxlora.models.from_pretrained` (``task``,
                                            ``num_labels``)
``load(tokenizer)``                         :class:`TaskData`: train / validation / test
                                            datasets, each with ``num_examples``
``steps_per_epoch(data, batch_size)``       batches in one epoch of ``data``
``train_batches(data, loader, batch_size,``  ``(batch, loader_after)`` pairs from a
``rows=None)``                              :class:`jaxlora.data.LoaderState` on, forever;
                                            a pure function of the loader state, so a resumed
                                            run sees the same batches; ``rows``: only those
                                            rows of each batch (one process's share, see
                                            :func:`jaxlora.data.make_batch`)
``eval_batches(data, batch_size)``          ``(batch, rows)`` pairs covering every example
                                            once; ``rows`` are the positions in ``data`` of the
                                            batch's real (leading) rows
``loss(outputs, batch)``                    the scalar training loss (pure, traced in the step)
``eval_outputs(outputs, batch)``            what evaluation keeps per example (traced in the
                                            eval step, so large outputs never leave the device)
``metrics(outputs, data)``                  ``{name: float}`` over a whole split
``write_predictions(path, data, outputs)``  the predictions file of the test split
==========================================  ===================================================

Every batch is a dict of numpy arrays whose first dimension is ``batch_size``, with an
``example_mask`` (1.0 for real rows, 0.0 for the dummy rows that pad a last partial batch).

A task kind is one file plus its test: it defines its task class, and registers a
:class:`TaskKind` that says which ``config.task`` values it accepts and how to build the task from
a config. A kind with options of its own declares them with ``options``: a ``ConfigDict`` that
:func:`jaxlora.training.default_config` adds as ``config.<kind name>`` (so ``--config.<kind>.x=...``
works on the command line and validation knows the fields). Register the file in
:mod:`jaxlora.tasks` (its ``__init__`` imports the built-in kinds).

>>> kind = find_kind("SST-2")
>>> kind.name, kind.canonical("SST-2")
('glue', 'sst2')
>>> find_kind("no such task") is None
True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Protocol

import numpy as np

__all__ = ["Task", "TaskData", "TaskKind", "register_kind", "kinds", "find_kind", "from_config", "task_names"]


class TaskData(NamedTuple):
    """The three datasets of a run: train, validation (checkpoint selection), test (reported)."""

    train: Any
    validation: Any
    test: Any


class Task(Protocol):
    """What the loop reads from a task (see the module docstring for each member)."""

    name: str
    display_name: str
    metric_name: str
    default_epochs: int
    device_keys: tuple[str, ...]

    def model_head(self) -> dict: ...

    def load(self, tokenizer: Any) -> TaskData: ...

    def steps_per_epoch(self, data: Any, batch_size: int) -> int: ...

    def train_batches(self, data: Any, loader: Any, batch_size: int,
                      rows: np.ndarray | None = None) -> Iterator[tuple[dict, Any]]: ...

    def eval_batches(self, data: Any, batch_size: int) -> Iterator[tuple[dict, np.ndarray]]: ...

    def loss(self, outputs: Any, batch: Mapping) -> Any: ...

    def eval_outputs(self, outputs: Any, batch: Mapping) -> Any: ...

    def metrics(self, outputs: np.ndarray, data: Any) -> dict[str, float]: ...

    def write_predictions(self, path: str, data: Any, outputs: np.ndarray) -> None: ...


@dataclasses.dataclass(frozen=True)
class TaskKind:
    """A family of tasks the loop can train: which ``config.task`` values it takes, how to build one.

    ``canonical(name)`` is the canonical task name for an accepted spelling, None for names of
    other kinds; ``names`` lists the accepted names for messages; ``options`` (optional) builds the
    kind's own config block, ``config.<name>``.
    """

    name: str
    canonical: Callable[[str], str | None]
    names: Callable[[], tuple[str, ...]]
    from_config: Callable[[Any], Task]
    options: Callable[[], Any] | None = None


_KINDS: dict[str, TaskKind] = {}


def register_kind(kind: TaskKind) -> TaskKind:
    """Make ``kind`` available to ``config.task`` (registering a name twice replaces the first)."""
    _KINDS[kind.name] = kind
    return kind


def kinds() -> tuple[TaskKind, ...]:
    """The registered task kinds, in registration order.

    >>> [kind.name for kind in kinds()][:1]
    ['glue']
    """
    return tuple(_KINDS.values())


def find_kind(task: str) -> TaskKind | None:
    """The kind that accepts the task name ``task``, or None."""
    for kind in _KINDS.values():
        if kind.canonical(str(task)) is not None:
            return kind
    return None


def task_names() -> tuple[str, ...]:
    """Every task name some registered kind accepts (for messages).

    >>> "rte" in task_names()
    True
    """
    return tuple(name for kind in _KINDS.values() for name in kind.names())


def from_config(config) -> Task:
    """The task of a training config, built by the kind that accepts ``config.task``.

    >>> from jaxlora.training import default_config
    >>> from_config(default_config()).metric_name
    'accuracy'
    """
    kind = find_kind(config.task)
    if kind is None:
        raise ValueError(f"config.task={config.task!r} is not a GLUE task or another registered task kind; "
                         f"choose one of {list(task_names())}.")
    return kind.from_config(config)
