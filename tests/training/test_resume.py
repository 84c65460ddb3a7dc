"""A run interrupted by Ctrl-C and resumed ends bit-identical to an uninterrupted one."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxlora import training


def _checkpoint(workdir, step):
    restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return jax.tree.map(np.asarray, restored)


def _train_losses(workdir):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_interrupted_and_resumed_run_matches_the_uninterrupted_one(tiny_factory, tmp_path, capsys):
    # Model dropout and adapter dropout are on, so the dropout keys must line up after the resume too.
    overrides = {"max_steps": 6, "eval_every": 3, "lora.dropout": 0.1, "model_dropout": 0.1}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    training.train(tiny_factory("lora", **overrides), straight)

    def ctrl_c_at_step_4(step):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_factory("lora", **overrides), resumed, hooks=[ctrl_c_at_step_4])
    assert f"Interrupted at step 4: saved a checkpoint in {resumed / 'checkpoints'}" in capsys.readouterr().out
    assert (resumed / "checkpoints" / "4").is_dir() and not (resumed / "checkpoints" / "5").exists()

    results = training.train(tiny_factory("lora", **overrides), resumed)
    assert results["steps"] == 6

    a, b = _checkpoint(straight, 6), _checkpoint(resumed, 6)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for name in ("trainable", "fixed", "opt_state", "step", "rng"):
        for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name])):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, err_msg=name)
    # Same losses step by step, and the metrics file of the resumed run has each step once.
    assert _train_losses(straight) == pytest.approx(_train_losses(resumed), rel=1e-6)
    assert sorted(_train_losses(resumed)) == [1, 2, 3, 4, 5, 6]
    assert json.loads((resumed / "results.json").read_text())["test_metric"] == pytest.approx(
        json.loads((straight / "results.json").read_text())["test_metric"])
