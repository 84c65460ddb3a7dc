"""GLUE metrics in plain numpy: accuracy, binary F1, Matthews correlation, Pearson, Spearman.

Evaluation gathers model outputs on the host anyway, so the metrics are small numpy functions
with no scikit-learn/scipy dependency. :func:`compute_metrics` picks the task's metrics from the
GLUE registry (:data:`jaxlora.data.glue.TASKS`): MCC for CoLA, Pearson and Spearman for STS-B,
accuracy for the rest, plus F1 for MRPC and QQP. :func:`primary_metric` names the one the CondLoRA
paper reports and checkpoint selection should maximise (all of them: higher is better).

Degenerate inputs (a constant prediction vector, no positive class) return 0.0 rather than NaN,
as scikit-learn does for MCC and F1: a best-checkpoint comparison must never see a NaN.

>>> compute_metrics("mrpc", [[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]], [1, 0, 0])
{'accuracy': 0.6666666666666666, 'f1': 0.6666666666666666}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxlora.data.glue import GlueTask, get_task

__all__ = [
    "accuracy",
    "f1_binary",
    "matthews_corrcoef",
    "pearson",
    "spearman",
    "predictions_from_outputs",
    "compute_metrics",
    "primary_metric",
    "METRICS",
]


def _paired(predictions: Any, labels: Any, dtype: Any = None) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.asarray(predictions, dtype=dtype).reshape(-1)
    labels = np.asarray(labels, dtype=dtype).reshape(-1)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels differ in size: {predictions.shape[0]} vs {labels.shape[0]}."
        )
    if predictions.size == 0:
        raise ValueError("Cannot compute a metric over zero examples.")
    return predictions, labels


def accuracy(predictions: Any, labels: Any) -> float:
    """Fraction of predictions equal to the labels.

    >>> round(accuracy([1, 0, 1], [1, 1, 1]), 4)
    0.6667
    """
    predictions, labels = _paired(predictions, labels)
    return float(np.mean(predictions == labels))


def f1_binary(predictions: Any, labels: Any, positive: int = 1) -> float:
    """F1 of the ``positive`` class: 2 TP / (2 TP + FP + FN); 0.0 when there is nothing to score.

    >>> f1_binary([1, 1, 0, 0], [1, 0, 1, 0])
    0.5
    """
    predictions, labels = _paired(predictions, labels)
    predicted, actual = predictions == positive, labels == positive
    true_pos = np.sum(predicted & actual)
    denominator = np.sum(predicted) + np.sum(actual)
    return float(2.0 * true_pos / denominator) if denominator > 0 else 0.0


def matthews_corrcoef(predictions: Any, labels: Any) -> float:
    """Matthews correlation coefficient (multi-class form of Gorodkin 2004; binary MCC as a special case).

    MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2)) with s examples,
    c correct, p_k predicted and t_k true counts of class k. 0.0 when either side is constant.

    >>> round(matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0]), 4)
    0.5774
    """
    predictions, labels = _paired(predictions, labels)
    classes, encoded = np.unique(np.concatenate([predictions, labels]), return_inverse=True)
    pred_ids, label_ids = encoded[: predictions.size], encoded[predictions.size :]
    k = len(classes)
    predicted_counts = np.bincount(pred_ids, minlength=k).astype(np.float64)
    true_counts = np.bincount(label_ids, minlength=k).astype(np.float64)
    samples = float(predictions.size)
    correct = float(np.sum(pred_ids == label_ids))
    numerator = correct * samples - float(predicted_counts @ true_counts)
    denominator = np.sqrt(
        (samples**2 - float(predicted_counts @ predicted_counts)) * (samples**2 - float(true_counts @ true_counts))
    )
    return float(numerator / denominator) if denominator > 0 else 0.0


def pearson(predictions: Any, labels: Any) -> float:
    """Pearson correlation; 0.0 when either vector is constant.

    >>> round(pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]), 4)
    0.9934
    """
    x, y = _paired(predictions, labels, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    return float(np.dot(x, y) / denominator) if denominator > 0 else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with tied values sharing the mean of their ranks (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Boundaries of runs of equal values in sorted order.
    starts = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    run_id = np.cumsum(starts) - 1
    run_start = np.flatnonzero(starts)
    run_end = np.concatenate([run_start[1:], [len(values)]])
    mean_rank = (run_start + run_end + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(values), np.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def spearman(predictions: Any, labels: Any) -> float:
    """Spearman rank correlation: Pearson of average ranks (ties handled as scipy does).

    >>> spearman([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
    1.0
    """
    x, y = _paired(predictions, labels, np.float64)
    return pearson(_average_ranks(x), _average_ranks(y))


METRICS = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def predictions_from_outputs(task: str | GlueTask, outputs: Any) -> np.ndarray:
    """Turn model outputs into predictions: argmax of logits, or the score of a regression head.

    Accepts logits ``(n, num_labels)``, class ids ``(n,)`` or regression scores ``(n,)``/``(n, 1)``.

    >>> predictions_from_outputs("sst2", [[0.1, 2.0], [3.0, -1.0]]).tolist()
    [1, 0]
    """
    task = get_task(task)
    outputs = np.asarray(outputs)
    if task.is_regression:
        if outputs.ndim == 2 and outputs.shape[1] == 1:
            outputs = outputs[:, 0]
        if outputs.ndim != 1:
            raise ValueError(
                f"{task.display_name} is a regression task: expected scores of shape (n,) or (n, 1), "
                f"got {outputs.shape}."
            )
        return outputs.astype(np.float64)
    if outputs.ndim == 2:
        if outputs.shape[1] != task.num_labels:
            raise ValueError(
                f"{task.display_name} has {task.num_labels} classes but the logits have shape {outputs.shape}."
            )
        return np.argmax(outputs, axis=-1)
    if outputs.ndim == 1:
        return outputs.astype(np.int64)
    raise ValueError(f"Expected logits (n, {task.num_labels}) or class ids (n,), got shape {outputs.shape}.")


def compute_metrics(task: str | GlueTask, outputs: Any, labels: Any, mask: Any = None) -> dict[str, float]:
    """All metrics of ``task`` for model ``outputs`` (logits, class ids or scores) against ``labels``.

    ``mask`` (e.g. the concatenated ``example_mask`` of eval batches) drops padding rows.

    >>> compute_metrics("cola", [[0.0, 1.0], [1.0, 0.0]], [1, 0])
    {'mcc': 1.0, 'accuracy': 1.0}
    >>> compute_metrics("stsb", [1.0, 2.0, 3.0, 0.0], [1.5, 2.5, 3.5, 0.0], mask=[1, 1, 1, 0])
    {'pearson': 1.0, 'spearman': 1.0}
    """
    task = get_task(task)
    predictions = predictions_from_outputs(task, outputs)
    labels = np.asarray(labels).reshape(-1)
    if mask is not None:
        keep = np.asarray(mask).reshape(-1) > 0
        if keep.shape != predictions.shape:
            raise ValueError(f"mask has {keep.size} entries for {predictions.size} predictions.")
        predictions, labels = predictions[keep], labels[keep]
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.size} predictions for {labels.size} labels.")
    unlabeled = np.isnan(labels.astype(np.float64)) if task.is_regression else labels < 0
    if np.any(unlabeled):
        raise ValueError(
            f"Labels of {task.display_name} include unlabeled examples (-1 or NaN, e.g. GLUE test): evaluate on a labeled split."
        )
    return {name: METRICS[name](predictions, labels) for name in task.metric_names}


def primary_metric(task: str | GlueTask) -> str:
    """The metric the CondLoRA paper reports for ``task`` (MCC for CoLA, Pearson for STS-B, else accuracy).

    >>> primary_metric("CoLA")
    'mcc'
    """
    return get_task(task).primary_metric
