"""The GLUE task table: the eight paper tasks, their metrics, every usual spelling."""

import pytest

from jaxlora import data as jdata


def test_registry_covers_the_eight_tasks_with_the_paper_metrics():
    expected_primary = {
        "cola": "mcc", "stsb": "pearson", "sst2": "accuracy", "mrpc": "accuracy",
        "rte": "accuracy", "qnli": "accuracy", "qqp": "accuracy", "mnli": "accuracy",
    }
    for name, metric in expected_primary.items():
        task = jdata.get_task(name)
        assert task.primary_metric == metric
        assert metric in task.metric_names
        assert task.hub_config in ("cola", "sst2", "mrpc", "stsb", "rte", "qnli", "qqp", "mnli")
    assert jdata.get_task("stsb").num_labels == 1 and jdata.get_task("stsb").is_regression
    assert jdata.get_task("stsb").metric_names == ("pearson", "spearman")
    assert "f1" in jdata.get_task("mrpc").metric_names and "f1" in jdata.get_task("qqp").metric_names
    assert jdata.get_task("mnli").num_labels == 3 and jdata.get_task("mnli").hub_splits["dev"] == "validation_matched"
    assert not jdata.get_task("sst2").is_pair and jdata.get_task("rte").is_pair


@pytest.mark.parametrize("spelling,name", [("SST-2", "sst2"), ("sst2", "sst2"), ("STS-B", "stsb"),
                                           ("CoLA", "cola"), ("MNLI-mm", "mnli_mm"), ("mnli", "mnli")])
def test_task_spellings(spelling, name):
    assert jdata.get_task(spelling).name == name


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown GLUE task 'wnli'.*sst2"):
        jdata.get_task("wnli")
