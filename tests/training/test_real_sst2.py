"""The offline config learns real SST-2: MiniLM-L6 + LoRA reaches >= 0.80 GLUE-dev accuracy in 200 steps."""

import json

import pytest

from jaxlora import training
from tests.training.conftest import load_config


@pytest.mark.slow
def test_offline_lora_learns_sst2(glue_dir, minilm_path, monkeypatch, tmp_path):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    config = load_config("lora", "offline")
    # The offline protocol, shortened to fit CI: 200 steps of batch 32 (6,400 examples, about a tenth of
    # an epoch) at a higher rate, no model dropout, two validations on 256 held-out examples.
    config.max_steps = 200
    config.max_length = 64
    config.model_dropout = 0.0
    config.optimizer.learning_rate = 2e-3
    config.eval_every = 100
    config.max_eval_examples = 256
    config.progress_bar = False
    workdir = tmp_path / "run"
    results = training.train(config, workdir)

    assert results["task"] == "sst2" and results["variant"] == "lora" and results["metric_name"] == "accuracy"
    assert results["test_metric"] >= 0.80, results  # GLUE dev, 872 sentences; chance is 0.51
    assert results["best_step"] in (100, 200)
    assert results["trainable_params"] == 74_498  # q, v at r=8 on 6 layers (73,728) + classifier (770)
    predictions = [json.loads(line) for line in (workdir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 872 and {p["label"] for p in predictions} == {0, 1}
    accuracy = sum(int(p["logits"][1] > p["logits"][0]) == p["label"] for p in predictions) / 872
    assert accuracy == pytest.approx(results["test_metric"])
    losses = [r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert sum(losses[-3:]) / 3 < 0.5 < losses[0]
    assert (workdir / "learning_curves.png").stat().st_size > 1000
    for folder in results["exported"].values():
        assert any((workdir / folder).iterdir())
