"""What a run leaves behind: a progress bar, metrics.jsonl, results.json, predictions, a learning curve.

* :class:`Progress`: a tqdm bar over steps showing loss, examples/s and (tqdm's) ETA;
* :class:`MetricsLog`: one JSON object per line in ``workdir/metrics.jsonl``, appended (a resumed
  run continues the same file; lines of steps after the checkpoint it resumed from are dropped);
* :func:`write_results`: ``workdir/results.json``;
* :func:`plot_learning_curves`: ``workdir/learning_curves.png`` from metrics.jsonl.

Files are written by process 0 only; the others get no-op writers.

>>> import pathlib, tempfile
>>> workdir = pathlib.Path(tempfile.mkdtemp())
>>> log = MetricsLog(workdir / "metrics.jsonl", resume_step=0)
>>> log.write({"step": 10, "split": "train", "loss": 0.69})
>>> log.write({"step": 10, "split": "validation", "accuracy": 0.8})
>>> plot_learning_curves(workdir / "metrics.jsonl", workdir / "learning_curves.png", "accuracy")
True
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Iterable, Mapping

import jax
import numpy as np

from jaxlora import util

__all__ = [
    "Progress",
    "MetricsLog",
    "write_json",
    "write_results",
    "read_metrics",
    "plot_learning_curves",
    "RESULT_KEYS",
]

RESULT_KEYS = (
    "task", "variant", "metric_name", "test_metric", "best_step", "trainable_params",
    "train_examples_per_s", "wall_time_s",
)


def _is_writer() -> bool:
    return jax.process_index() == 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


def write_json(path: str | os.PathLike, document: Mapping[str, Any]) -> None:
    """Write ``document`` to ``path`` atomically, indented (numpy values as numbers, NaN as text).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "results.json")
    >>> write_json(path, {"loss": float("nan"), "steps": np.int64(3)})
    >>> open(path).read().split()
    ['{', '"loss":', '"nan",', '"steps":', '3', '}']
    """
    if _is_writer():
        util.write_json(path, _jsonable(document))


class Progress:
    """A tqdm bar over training steps: ``loss``, ``ex/s`` and the remaining time.

    >>> bar = Progress(total=1000, initial=0, enabled=False)   # enabled=True draws it on stderr
    >>> bar.update(1, loss=0.5, examples_per_s=120.0)
    >>> bar.close()
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self._bar = None
        if enabled and _is_writer():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, smoothing=0.1)

    def update(self, steps: int, **postfix: float) -> None:
        if self._bar is None:
            return
        self._bar.update(steps)
        if postfix:
            self._bar.set_postfix(
                {k.replace("examples_per_s", "ex/s"): (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                refresh=False,
            )

    def write(self, message: str) -> None:
        """Print ``message`` above the bar (or log it when there is no bar)."""
        if self._bar is not None:
            self._bar.write(message)
        else:
            logging.getLogger("jaxlora.training").info(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (an empty list when it does not exist).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
    >>> _ = open(path, "w").write('{"step": 1, "split": "train", "loss": 0.7}\\n{"step": 2, "spl')   # cut by a crash
    >>> [r["loss"] for r in read_metrics(path) if r["split"] == "train"]
    [0.7]
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: skip it
    return records


class MetricsLog:
    """Append-only ``metrics.jsonl``. A resumed run first drops records of steps after ``resume_step``
    (they belong to the part of the interrupted run that is being redone).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
    >>> for step in (1, 2, 3):
    ...     MetricsLog(path, resume_step=step - 1).write({"step": step, "split": "train", "loss": 0.5})
    >>> MetricsLog(path, resume_step=1).write({"step": 2, "split": "train", "loss": 0.4})   # resumed at step 1
    >>> [(r["step"], r["loss"]) for r in read_metrics(path)]
    [(1, 0.5), (2, 0.4)]
    """

    def __init__(self, path: str | os.PathLike, resume_step: int = 0):
        self.path = os.fspath(path)
        if not _is_writer():
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # A finished run's test line is written again at the end of the resumed one.
        kept = [r for r in read_metrics(self.path)
                if int(r.get("step", 0)) <= resume_step and r.get("split") != "test"] if resume_step > 0 else []
        with open(self.path, "w") as f:
            for record in kept:
                f.write(json.dumps(record) + "\n")

    def write(self, record: Mapping[str, Any]) -> None:
        if not _is_writer():
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")


def write_results(path: str | os.PathLike, results: Mapping[str, Any]) -> None:
    """Write results.json after checking it has every key of :data:`RESULT_KEYS`.

    >>> write_results("results.json", {"task": "sst2"})
    Traceback (most recent call last):
    ValueError: results lack ['variant', 'metric_name', 'test_metric', 'best_step', 'trainable_params', 'train_examples_per_s', 'wall_time_s']
    """
    missing = [k for k in RESULT_KEYS if k not in results]
    if missing:
        raise ValueError(f"results lack {missing}")
    write_json(path, results)


def plot_learning_curves(
    metrics_path: str | os.PathLike, png_path: str | os.PathLike, metric_name: str, title: str = ""
) -> bool:
    """Training loss and validation ``metric_name`` against step, as a two-panel PNG.

    Returns False (and writes nothing) when matplotlib is missing or there is nothing to plot.

    >>> plot_learning_curves("no/such/metrics.jsonl", "unused.png", "accuracy")   # nothing to plot
    False
    """
    if not _is_writer():
        return False
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("split") == "train" and isinstance(r.get("loss"), float)]
    valid = [(r["step"], r[metric_name]) for r in records if r.get("split") == "validation" and metric_name in r]
    if not train and not valid:
        return False
    try:
        # A bare Figure draws with Agg without touching pyplot's global backend, so a notebook that
        # called train() still shows its own plots inline.
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2)
    if train:
        left.plot(*zip(*train), lw=1)
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    if valid:
        right.plot(*zip(*valid), marker="o", lw=1)
    right.set_xlabel("step")
    right.set_ylabel(f"validation {metric_name}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.fspath(png_path), dpi=100)
    return True


def summarize(values: Iterable[float]) -> float:
    """Mean of finite values (NaN when none): for averaging logged losses.

    >>> summarize([0.5, 0.7, float("nan")])
    0.6
    """
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
