"""Each failure has one clear message: bad config fields, missing/malformed data, NaN loss, bad checkpoints."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlora import training
from jaxlora.training import config as config_lib
from tests.training.conftest import REPO, load_config, tiny, write_sst2


def test_unknown_field_in_python_names_it_and_the_close_match():
    config = load_config("lora")
    config.unlock()
    config.lora.rnk = 4
    config.lora.unlock()
    config.bogus = 1
    with pytest.raises(ValueError) as err:
        training.validate(config)
    text = str(err.value)
    assert "unknown field 'config.lora.rnk'. Did you mean 'config.lora.rank'?" in text
    assert "unknown field 'config.bogus'" in text


def test_wrong_values_are_named():
    config = load_config("lora")
    config.lora.variant = "dora"
    config.task = "squad"
    with pytest.raises(ValueError, match=r"config.task='squad' is not a GLUE task"):
        training.validate(config)
    config.task = "sst2"
    with pytest.raises(ValueError, match=r"config.lora.variant='dora' is unknown; choose one of .*'condlora'.*'full'"):
        training.validate(config)


def test_unknown_override_on_the_command_line_is_one_clear_line():
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/lora_sst2.py", "--workdir", "unused",
         "--config.lora.rnk=4"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2
    assert "unknown config field in '--config.lora.rnk=4': 'rnk' is not a field" in proc.stderr
    assert "Did you mean 'rank'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_offline_config_without_glue_dir_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"GLUE_DIR='.*nowhere' is not a folder"):
        load_config("lora", "offline")


def test_missing_data_file_names_the_file(tiny_model, tmp_path):
    glue = write_sst2(tmp_path / "glue")
    os.remove(glue / "SST-2" / "dev.tsv")
    config = tiny(load_config("lora"), tiny_model, glue, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"No dev file for GLUE task SST-2 in .*SST-2"):
        training.train(config, tmp_path / "run")


def test_malformed_data_line_names_file_and_line(tiny_model, tmp_path):
    glue = write_sst2(tmp_path / "glue")
    train_file = glue / "SST-2" / "train.tsv"
    lines = train_file.read_text().splitlines()
    lines[5] = "a film with\ttoo\tmany tabs\t1"
    train_file.write_text("\n".join(lines) + "\n")
    config = tiny(load_config("lora"), tiny_model, glue, tmp_path)
    with pytest.raises(ValueError, match=r"Malformed GLUE file .*train.tsv, line 6: expected 2 tab-separated fields"):
        training.train(config, tmp_path / "run")


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_factory, tmp_path):
    # No warmup and a huge rate: the first update blows the weights up and within a step or two the
    # loss is not finite. Every step is validated and checkpointed until then.
    config = tiny_factory("lora", **{"optimizer.learning_rate": 1e30, "optimizer.warmup_ratio": 0.0,
                                     "max_steps": 6, "eval_every": 1, "model_dropout": 0.0})
    workdir = tmp_path / "run"
    with pytest.raises(training.NonFiniteLossError) as err:
        training.train(config, workdir)
    message = str(err.value)
    found = re.search(r"(?:The training loss is nan at step|not finite after the update of step) (\d+): "
                      r"training stopped\. The last good checkpoint is step (\d+) in (\S+)\.", message)
    assert found, message
    bad, good, where = int(found.group(1)), int(found.group(2)), found.group(3)
    assert bad >= 2 and good == bad - 1 and where == str(workdir / "checkpoints")
    saved = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
    assert saved[-1] == good  # nothing from the bad step on was written
    losses = [r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert len(losses) == bad - 1 and all(np.isfinite(losses))
    assert not (workdir / "results.json").exists()


def _small_state():
    return {"trainable": {"a": jnp.arange(6.0).reshape(2, 3)}, "step": jnp.int32(0)}


def _damage(step_dir):
    # Truncate every data file of the state item: the directory still looks committed.
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(0)


def test_checkpointer_keeps_latest_and_best(tmp_path):
    ckpt = training.Checkpointer(tmp_path / "ckpt", keep=1, async_save=False)
    state = _small_state()
    ckpt.save(1, state, {"loader": [0, 1, 0]}, metric=0.9)
    ckpt.close()
    ckpt = training.Checkpointer(tmp_path / "ckpt", keep=1, async_save=False)  # a resumed run
    for step, metric in ((2, 0.5), (3, None), (4, 0.4)):
        ckpt.save(step, state, {"loader": [0, step, 0]}, metric=metric)
    ckpt.wait()
    assert ckpt.steps == [1, 4]  # the best (0.9, from before the restart) and the latest
    assert ckpt.save(4, state, {}) is False  # never overwrites a step
    ckpt.close()


def test_corrupted_latest_checkpoint_falls_back_with_a_message(tmp_path, caplog):
    directory = tmp_path / "ckpt"
    ckpt = training.Checkpointer(directory, keep=3, async_save=False)
    states = {}
    for step in (1, 2):
        states[step] = {"trainable": {"a": jnp.full((2, 3), float(step))}, "step": jnp.int32(step)}
        ckpt.save(step, states[step], {"loader": [0, step, 0]})
    ckpt.close()
    _damage(directory / "2")
    # A write that died before orbax committed it: a temporary directory, never read.
    (directory / "3.orbax-checkpoint-tmp-1700000000").mkdir()

    ckpt = training.Checkpointer(directory, keep=3, async_save=False)
    assert ckpt.steps == [1, 2]
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), states[1])
    with caplog.at_level(logging.WARNING, logger="jaxlora.training"):
        restored = ckpt.restore_latest(target)
    assert restored.step == 1 and restored.meta["loader"] == [0, 1, 0]
    np.testing.assert_array_equal(restored.state["trainable"]["a"], np.full((2, 3), 1.0))
    assert f"Checkpoint step 2 in {directory} is unreadable" in caplog.text
    assert "falling back to step 1" in caplog.text
    assert (directory / "corrupt" / "2").is_dir() and ckpt.steps == [1]
    ckpt.close()


def test_missing_glue_dir_on_the_command_line_is_one_clear_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/condlora_sst2.py:offline", "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "GLUE_DIR": str(tmp_path / "missing")},
    )
    assert proc.returncode == 2
    assert f"FATAL: cannot load --config: GLUE_DIR='{tmp_path / 'missing'}' is not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr
