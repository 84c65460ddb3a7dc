"""GLUE sentence(-pair) classification and regression: the task kind behind ``config.task = "sst2"``.

One :class:`Glue` task per GLUE task of :data:`jaxlora.data.TASKS`. It reads the CondLoRA protocol's
splits (90% of GLUE train / 10% of it for checkpoint selection / GLUE dev as test, see
:func:`jaxlora.data.protocol_splits`), tokenizes them once (cached), and batches them in
length buckets (:mod:`jaxlora.data.batching`). The model gets a classification head with the
task's classes, or a one-output regression head (STS-B); the loss is cross-entropy, or squared
error for regression; the metrics are GLUE's (:mod:`jaxlora.tasks.metrics`); the predictions file
has one ``{"idx", "label", "logits"}`` line per test example.

Its options are top-level fields of the training config (they predate task kinds and stay where
users type them): ``data_dir``, ``validation_fraction``, ``split_seed``, ``max_length``,
``min_bucket``, ``group_by_length``, ``max_eval_examples``, ``cache_dir``.

>>> task = Glue(jdata.get_task("stsb"))
>>> task.metric_name, task.model_head()
('pearson', {'task': 'regression', 'num_labels': 1})
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlora import data as jdata
from jaxlora.tasks import base
from jaxlora.tasks.metrics import compute_metrics

__all__ = ["Glue", "loss_fn", "write_predictions", "KIND"]


def loss_fn(outputs: jax.Array, labels: jax.Array, example_mask: jax.Array, regression: bool) -> jax.Array:
    """Mean cross-entropy (classification) or squared error (regression) over real examples.

    Dummy rows of a partial batch (``example_mask == 0``) weigh nothing.

    >>> round(float(loss_fn(jnp.array([[2.0, 0.0], [0.0, 9.0]]), jnp.array([0, 0]), jnp.array([1.0, 0.0]),
    ...                     regression=False)), 4)
    0.1269
    >>> float(loss_fn(jnp.array([[1.0], [3.0]]), jnp.array([2.0, 3.0]), jnp.array([1.0, 1.0]), regression=True))
    0.5
    """
    outputs = outputs.astype(jnp.float32)
    if regression:
        per_example = jnp.square(outputs[:, 0] - labels.astype(jnp.float32))
    else:
        per_example = optax.softmax_cross_entropy_with_integer_labels(outputs, labels.astype(jnp.int32))
    mask = example_mask.astype(jnp.float32)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def write_predictions(path: str | os.PathLike, idx: Any, labels: Any, logits: np.ndarray) -> None:
    """``predictions.jsonl``: one ``{"idx", "label", "logits"}`` line per example, in file order (atomic).

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "predictions.jsonl"
    >>> write_predictions(path, [7], np.array([1]), np.array([[0.5, 2.0]]))
    >>> path.read_text()
    '{"idx": 7, "label": 1, "logits": [0.5, 2.0]}\\n'
    """
    path = os.fspath(path)
    logits = np.asarray(logits, np.float64)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        for i, label, row in zip(idx, labels, logits):
            label = label.item() if hasattr(label, "item") else label
            f.write(json.dumps({"idx": int(i), "label": label, "logits": [float(v) for v in np.atleast_1d(row)]}) + "\n")
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class Glue:
    """One GLUE task, trained under the CondLoRA protocol (see the module docstring).

    >>> task = Glue(jdata.get_task("sst2"), max_length=64, min_bucket=16)
    >>> task.name, task.default_epochs, task.buckets
    ('sst2', 60, (16, 32, 64))
    """

    spec: jdata.GlueTask
    data_dir: str | None = None  # None: the Hugging Face hub
    validation_fraction: float = 0.1
    split_seed: int = 1
    max_length: int = 512
    min_bucket: int = 16
    group_by_length: bool = False
    max_eval_examples: int = -1
    cache_dir: str | None = None

    device_keys = jdata.DEVICE_KEYS

    @classmethod
    def from_config(cls, config) -> "Glue":
        return cls(
            spec=jdata.get_task(config.task),
            data_dir=config.data_dir or None,
            validation_fraction=float(config.validation_fraction),
            split_seed=int(config.split_seed),
            max_length=int(config.max_length),
            min_bucket=min(int(config.min_bucket), int(config.max_length)),
            group_by_length=bool(config.group_by_length),
            max_eval_examples=int(config.max_eval_examples),
            cache_dir=config.cache_dir or None,
        )

    name = property(lambda self: self.spec.name)
    display_name = property(lambda self: self.spec.display_name)
    metric_name = property(lambda self: self.spec.primary_metric)
    default_epochs = property(lambda self: int(self.spec.max_epochs))
    is_regression = property(lambda self: self.spec.is_regression)

    @property
    def buckets(self) -> tuple[int, ...]:
        return jdata.bucket_lengths(self.max_length, self.min_bucket)

    def model_head(self) -> dict:
        return {"task": "regression" if self.is_regression else "sequence_classification",
                "num_labels": self.spec.num_labels}

    def load(self, tokenizer: Any) -> base.TaskData:
        splits = jdata.protocol_splits(
            self.spec, data_dir=self.data_dir, source="local" if self.data_dir else "hub",
            validation_fraction=self.validation_fraction, seed=self.split_seed,
        )
        train, validation, test = (
            jdata.tokenize(split, tokenizer, self.max_length, cache_dir=self.cache_dir, name=f"{self.name}-{name}")
            for name, split in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
        )
        if 0 < self.max_eval_examples < validation.num_examples:
            # The protocol's validation slice is already a random shuffle: its head is a random subset.
            validation = jdata.select(validation, np.arange(self.max_eval_examples))
        return base.TaskData(train, validation, test)

    def steps_per_epoch(self, data: jdata.TokenizedDataset, batch_size: int) -> int:
        return jdata.steps_per_epoch(data.num_examples, batch_size)

    def train_batches(self, data: jdata.TokenizedDataset, loader: jdata.LoaderState, batch_size: int,
                      rows: np.ndarray | None = None) -> Iterator[tuple[dict, jdata.LoaderState]]:
        return jdata.iterate(data, loader, batch_size, buckets=self.buckets, group_by_length=self.group_by_length,
                             rows=rows)

    def eval_batches(self, data: jdata.TokenizedDataset, batch_size: int) -> Iterator[tuple[dict, np.ndarray]]:
        return jdata.iterate_eval_rows(data, batch_size, buckets=self.buckets)

    def loss(self, outputs: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        return loss_fn(outputs, batch["labels"], batch["example_mask"], self.is_regression)

    def eval_outputs(self, outputs: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        return outputs.astype(jnp.float32)  # logits, or the regression score

    def metrics(self, outputs: np.ndarray, data: jdata.TokenizedDataset) -> dict[str, float]:
        return compute_metrics(self.spec, outputs, data.labels)

    def write_predictions(self, path: str, data: jdata.TokenizedDataset, outputs: np.ndarray) -> None:
        write_predictions(path, data.idx, data.labels, outputs)


def _canonical(name: str) -> str | None:
    try:
        return jdata.get_task(name).name
    except ValueError:
        return None


KIND = base.register_kind(base.TaskKind(
    name="glue", canonical=_canonical, names=jdata.task_names, from_config=Glue.from_config,
))
