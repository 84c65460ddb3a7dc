"""Every config file loads, and trains two steps end to end on a tiny BERT and tiny SST-2."""

import json

import pytest

from jaxlora import training
from tests.training.conftest import METHODS, REPO, load_config


@pytest.mark.parametrize("method", METHODS)
def test_config_file_loads_with_protocol_defaults(method):
    config = load_config(method)
    training.validate(config)
    assert config.task == "sst2" and config.batch_size == 16 and config.max_length == 512
    assert config.lora.rank == 8 and config.lora.alpha == 8.0 and tuple(config.lora.targets) == ("query", "value")
    assert config.optimizer.weight_decay == 0.0 and config.optimizer.warmup_ratio == 0.1
    assert training.config.num_epochs(config) == 60
    expected_variant = method
    assert config.lora.variant == expected_variant


def test_protocol_learning_rates_follow_the_task():
    lora, cond = load_config("lora"), load_config("condlora")
    assert training.config.learning_rate(lora) == pytest.approx(2.53e-4)
    assert training.config.learning_rate(cond) == pytest.approx(4.14e-4)
    cond.task = "rte"
    assert training.config.learning_rate(cond) == pytest.approx(1.62e-4)
    assert training.config.num_epochs(cond) == 100
    assert load_config("lora", "stsb").task == "stsb"


def test_offline_config_uses_minilm_and_glue_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    config = load_config("condlora", "offline")
    assert config.model == "minilm-l6" and config.data_dir == str(tmp_path)


@pytest.mark.parametrize("method", METHODS)
def test_every_config_trains_two_steps(method, tiny_factory, tmp_path):
    config = tiny_factory(method)
    workdir = tmp_path / "run"
    results = training.train(config, workdir)
    for key in training.reporting.RESULT_KEYS:
        assert key in results
    assert results["variant"] == method and results["steps"] == 2 and results["best_step"] == 2
    assert 0.0 <= results["test_metric"] <= 1.0
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["test_metric"] == results["test_metric"]
    predictions = [json.loads(line) for line in (workdir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 24 and len(predictions[0]["logits"]) == 2
    train_lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train_lines if r["split"] == "train"] == [1, 2]
    if method == "full":
        assert (workdir / "model" / "model.safetensors").exists()
        assert results["trainable_params"] == results["param_counts"]["frozen"]
    else:
        assert results["trainable_params"] < results["param_counts"]["frozen"]


def test_regression_task_trains_with_mse_and_reports_pearson(tiny_factory, tmp_path):
    config = tiny_factory("condlora", task="stsb")
    results = training.train(config, tmp_path / "run")
    assert results["task"] == "stsb" and results["metric_name"] == "pearson"
    assert set(results["test_metrics"]) == {"pearson", "spearman"}
    first = json.loads((tmp_path / "run" / "predictions.jsonl").read_text().splitlines()[0])
    assert len(first["logits"]) == 1 and isinstance(first["label"], float)


def test_init_from_peft_starts_from_the_exported_adapter(tiny_factory, tmp_path):
    import jax
    import numpy as np

    import jaxlora
    from jaxlora import interop

    workdir = tmp_path / "run"
    training.train(tiny_factory("lora"), workdir)
    trained, trained_config, _ = interop.load_adapter(str(workdir / "adapter"))
    run = training.build(tiny_factory("lora", init_from_peft=str(workdir / "peft_adapter")))
    started = jaxlora.Adapter(jax.device_get(run.initial_state.trainable), jax.device_get(run.initial_state.fixed))
    expected = jaxlora.merge(run.frozen_host, trained, trained_config)
    got = jaxlora.merge(run.frozen_host, started, run.adapter_config)
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(x, y, atol=1e-6)
