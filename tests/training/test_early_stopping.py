"""The protocol knobs of the loop: early stopping, the long-epoch validation cadence and the tested step."""

import json

import pytest

from jaxlora import training


def _validations(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["split"] == "validation"]


def test_early_stopping_stops_after_patience_validations_without_a_new_best(tiny_factory, tmp_path):
    # A rate so small the validation metric never moves: the first validation is the best, each later
    # one is a tie, which counts as no improvement (the HF Trainer's rule), so patience 2 stops at step 3.
    config = tiny_factory("lora", **{"optimizer.learning_rate": 1e-12, "max_steps": 8, "eval_every": 1,
                                     "early_stopping.patience": 2, "early_stopping.tasks": ("sst2",)})
    results = training.train(config, tmp_path / "run")
    assert results["stopped_early"] and results["steps"] == 3 and _validations(tmp_path / "run") == [1, 2, 3]
    assert results["best_step"] == 3  # ties go to the later step for selection


def test_early_stopping_applies_only_to_the_listed_tasks_and_the_last_step_can_be_tested(tiny_factory, tmp_path):
    config = tiny_factory("lora", **{"optimizer.learning_rate": 1e-12, "max_steps": 4, "eval_every": 1,
                                     "early_stopping.patience": 1, "early_stopping.tasks": ("mrpc",),
                                     "test_step": "last"})
    results = training.train(config, tmp_path / "run")
    assert not results["stopped_early"] and results["steps"] == 4 and results["best_step"] == 4


def test_long_epoch_cadence_and_bad_values():
    config = training.default_config()
    config.long_epoch_eval_every = 1500
    assert training.config.eval_every(config, 2105) == 1500 and training.config.eval_every(config, 1499) == 1499
    config.eval_every = 7  # an explicit cadence wins
    assert training.config.eval_every(config, 2105) == 7
    config.test_step = "best-ish"
    with pytest.raises(ValueError, match=r"config.test_step='best-ish': use one of \['best', 'last'\]"):
        training.validate(config)
