"""GLUE metrics against scipy and hand-computed values."""

import numpy as np
import pytest
from scipy import stats

from jaxlora.tasks import metrics


def test_accuracy_and_binary_f1_known_values():
    predictions = [1, 1, 0, 0, 1]
    labels = [1, 0, 1, 0, 1]
    assert metrics.accuracy(predictions, labels) == pytest.approx(3 / 5)
    # TP=2, FP=1, FN=1 -> precision 2/3, recall 2/3, F1 2/3.
    assert metrics.f1_binary(predictions, labels) == pytest.approx(2 / 3)
    assert metrics.f1_binary([0, 0], [0, 0]) == 0.0  # no positives anywhere: 0, not NaN


def test_mcc_known_values_and_degenerate_cases():
    # TP=1, TN=2, FP=1, FN=0: (1*2 - 1*0) / sqrt(2*1*3*2) = 2 / sqrt(12).
    assert metrics.matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(2 / np.sqrt(12))
    assert metrics.matthews_corrcoef([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert metrics.matthews_corrcoef([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0  # constant predictions


def test_mcc_equals_the_phi_coefficient_on_random_binary_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    predictions = np.where(rng.random(500) < 0.8, labels, 1 - labels)
    # For binary data MCC is Pearson's correlation of the two 0/1 vectors.
    assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(
        stats.pearsonr(predictions, labels).statistic, abs=1e-12
    )


def test_pearson_and_spearman_match_scipy_with_ties():
    rng = np.random.default_rng(1)
    labels = np.round(rng.uniform(0, 5, 300), 1)  # many ties, like STS-B scores
    predictions = labels + rng.normal(0, 1.0, 300)
    predictions[:40] = np.round(predictions[:40])  # ties on the prediction side too
    assert metrics.pearson(predictions, labels) == pytest.approx(stats.pearsonr(predictions, labels).statistic, abs=1e-12)
    assert metrics.spearman(predictions, labels) == pytest.approx(stats.spearmanr(predictions, labels).statistic, abs=1e-12)
    assert metrics.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0  # constant: 0, not NaN


def test_compute_metrics_per_task():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5], [1.0, 0.0]])
    labels = np.array([1, 0, 0, 0])
    assert metrics.compute_metrics("sst2", logits, labels) == {"accuracy": 0.75}
    mrpc = metrics.compute_metrics("MRPC", logits, labels)
    assert set(mrpc) == {"accuracy", "f1"} and mrpc["f1"] == pytest.approx(2 / 3)
    cola = metrics.compute_metrics("cola", logits, labels)
    assert cola["mcc"] == pytest.approx(metrics.matthews_corrcoef([1, 0, 1, 0], labels))
    mnli = metrics.compute_metrics("mnli", np.eye(3)[[0, 1, 2, 2]], [0, 1, 2, 1])
    assert mnli == {"accuracy": 0.75}
    scores = np.array([[0.5], [2.0], [4.0], [3.0]])
    stsb = metrics.compute_metrics("stsb", scores, [0.0, 1.5, 5.0, 3.2])
    assert set(stsb) == {"pearson", "spearman"} and stsb["spearman"] == pytest.approx(1.0)
    assert [metrics.primary_metric(t) for t in ("CoLA", "STS-B", "SST-2", "qqp")] == [
        "mcc", "pearson", "accuracy", "accuracy"]


def test_compute_metrics_drops_masked_padding_rows():
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [5.0, 0.0]])
    labels = np.array([1, 0, 1])  # the third row is a dummy from a padded batch
    assert metrics.compute_metrics("rte", logits, labels, mask=[1.0, 1.0, 0.0]) == {"accuracy": 1.0}


def test_compute_metrics_errors():
    with pytest.raises(ValueError, match="SST-2 has 2 classes but the logits have shape"):
        metrics.compute_metrics("sst2", np.zeros((3, 3)), [0, 1, 0])
    with pytest.raises(ValueError, match="unlabeled examples"):
        metrics.compute_metrics("sst2", [0, 1], [-1, -1])
    with pytest.raises(ValueError, match="unlabeled examples"):
        metrics.compute_metrics("stsb", [0.5, 1.0], [np.nan, np.nan])
    with pytest.raises(ValueError, match="differ in size"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="STS-B is a regression task"):
        metrics.compute_metrics("stsb", np.zeros((2, 2)), [0.0, 1.0])
