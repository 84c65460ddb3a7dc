"""configs/: the parametrised GLUE config and its per-method shortcuts load, take their options, and every
method trains two steps end to end on a tiny BERT and tiny SST-2."""

import json

import pytest

from jaxlora import training
from tests.training.conftest import METHODS, REPO, load_config


@pytest.mark.parametrize("method", METHODS)
def test_config_file_loads_with_protocol_defaults(method):
    config = load_config(method)
    training.validate(config)
    assert config.task == "sst2" and config.max_length == 512 and config.optimizer.clip_norm == 1.0
    assert config.lora.rank == 8 and config.lora.variant == method
    assert training.config.num_epochs(config) == 60
    if method in ("bonly", "aonly"):  # the asymmetry paper's protocol (tests/experiments/test_presets.py: all fields)
        assert config.lora.alpha == 16.0 and config.lora.dropout == 0.05 and config.test_step == "last"
    elif method == "mtlora":  # MTLoRA's official protocol
        assert config.lora.alpha == 16.0 and config.batch_size == 32 and config.optimizer.weight_decay == 0.1
    else:  # the CondLoRA paper's
        assert config.batch_size == 16 and config.lora.alpha == 8.0 and tuple(config.lora.targets) == ("query", "value")
        assert config.optimizer.weight_decay == 0.0 and config.optimizer.warmup_ratio == 0.1
        assert config.early_stopping.patience == 30 and config.long_epoch_eval_every == 1500


def test_protocol_learning_rates_follow_the_task():
    lora, cond = load_config("lora"), load_config("condlora")
    assert training.config.learning_rate(lora) == pytest.approx(2.53e-4)
    assert training.config.learning_rate(cond) == pytest.approx(4.14e-4)
    cond.task = "rte"
    assert training.config.learning_rate(cond) == pytest.approx(1.62e-4)
    assert training.config.num_epochs(cond) == 100
    assert load_config("lora", "stsb").task == "stsb"


def test_lora_block_is_adapter_configs_fields_plus_a_block_per_variant_with_options():
    import dataclasses

    import jaxlora
    from tests.adapters.helpers import builtin_variants

    config = training.default_config()
    fields = {f.name for f in dataclasses.fields(jaxlora.AdapterConfig)} - {"options", "layer_stacks"}  # the model's
    with_options = {n for n in builtin_variants() if dataclasses.fields(jaxlora.adapters.get_variant(n).Options)}
    assert with_options == {"mtlora", "condlora"}
    assert fields | with_options <= set(config.lora.keys())
    for name in builtin_variants():
        config.lora.variant = name
        cfg = training.adapter_config(config)
        assert cfg == jaxlora.AdapterConfig(name, trainable=("classifier",))  # the defaults are AdapterConfig's
    config.lora.variant = "mtlora"
    config.lora.mtlora.init = "identity"
    assert training.adapter_config(config).options.init == "identity"


def test_bad_or_moved_variant_options_are_named():
    config = training.default_config()
    config.lora.variant = "mtlora"
    config.lora.mtlora.structure = "tshm"
    with pytest.raises(ValueError, match=r"config.lora: Unknown MTLoRA structure 'tshm'"):
        training.validate(config)
    config = training.default_config().unlock()
    config.lora.structure = "ctcm"
    with pytest.raises(ValueError, match=r"unknown field 'config.lora.structure'. Variant options have their own "
                                         r"block now: use 'config.lora.mtlora.structure'"):
        training.validate(config)


def test_glue_config_argument_picks_method_task_and_offline(monkeypatch, tmp_path):
    from configs import glue

    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    assert glue.parse("method=condlora,task=rte,offline") == {"method": "condlora", "protocol": "condlora",
                                                              "task": "rte", "rank": None, "offline": True}
    assert glue.parse("offline,STS-B") == {"method": "lora", "protocol": "condlora", "task": "stsb", "rank": None,
                                           "offline": True}  # the old spelling
    assert glue.parse("method=aonly,rank=16")["protocol"] == "asymmetry"  # a method's own paper's protocol
    config = glue.get_config("method=full,task=mrpc,offline")
    assert (config.lora.variant, config.task, config.optimizer.learning_rate) == ("full", "mrpc", 5e-5)
    assert glue.get_config("method=mtlora,protocol=condlora").optimizer.task_learning_rates["sst2"] == pytest.approx(2.53e-4)
    with pytest.raises(ValueError, match=r"Unknown method 'dora' in the config argument; choose one of \[.*'full'\]"):
        glue.get_config("method=dora")
    with pytest.raises(ValueError, match=r"Unknown config option 'ofline': use method=<.*>, protocol=<.*>, task=<.*>, "
                                         r"rank=<r> and/or offline"):
        glue.get_config("ofline")


SHORTCUTS = [f"{m}_sst2" for m in METHODS]


def test_every_method_has_its_shortcut_file_and_no_config_edits_sys_path():
    assert all((REPO / "configs" / f"{name}.py").is_file() for name in SHORTCUTS)
    assert not [p.name for p in (REPO / "configs").glob("*.py") if "sys.path" in p.read_text()]


@pytest.mark.parametrize("name", SHORTCUTS)
def test_shortcut_files_load_by_path_as_users_type_them_and_equal_the_glue_config(name, monkeypatch, tmp_path):
    from absl import flags
    from ml_collections import config_flags

    from configs import glue

    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    monkeypatch.chdir(REPO)
    method = name.removesuffix("_sst2")
    for arg, options in ((None, ""), ("offline", "offline"), ("offline,rte", "offline,task=rte")):
        argv = ["train.py", f"--config=configs/{name}.py" + (f":{arg}" if arg else "")]
        flag_values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=argv)
        flag_values(argv)
        expected = glue.get_config(glue.with_method(method, options))
        assert flag_values.config.to_dict() == expected.to_dict()


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


def test_a_variant_from_one_outside_file_trains_with_its_option_from_the_command_line_and_exports(tiny_factory, tmp_path):
    import importlib

    import numpy as np
    from absl import flags
    from ml_collections import config_flags

    import jaxlora
    from jaxlora import interop

    importlib.import_module("tests.adapters.gain_variant")  # registers "gainlora"
    argv = ["train.py", "--config.lora.variant=gainlora", "--config.lora.gainlora.gain=2.5"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", tiny_factory("lora"), flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    assert training.adapter_config(config).options.gain == 2.5

    workdir = tmp_path / "run"
    results = training.train(config, workdir)
    assert results["variant"] == "gainlora" and results["steps"] == 2
    adapter, adapter_config, _ = interop.load_adapter(str(workdir / "adapter"))
    assert adapter_config.variant == "gainlora" and adapter_config.options.gain == 2.5
    # The option reaches the math: the exported factors carry the gain, and PEFT's file holds them.
    factors = jaxlora.to_lora_factors(training.build(config).frozen_host, adapter, adapter_config)
    path, (a, b, _) = sorted(factors.items())[0]
    np.testing.assert_allclose(a, 2.5 * np.asarray(flatten_get(adapter.trainable["lowrank"], path)["a"]), rtol=1e-6)
    assert (workdir / "peft_adapter" / "adapter_model.safetensors").exists()
    assert "gainlora (gain=2.5)" in (workdir / "peft_adapter" / "README.md").read_text()


def flatten_get(tree, path):
    for name in path:
        tree = tree[name]
    return tree


def test_num_epochs_has_no_hidden_fallback():
    import types

    config = training.default_config()
    assert training.config.num_epochs(config) == 60  # SST-2's protocol cap
    config.num_epochs = 3
    assert training.config.num_epochs(config) == 3
    config.num_epochs = 0
    with pytest.raises(ValueError, match=r"task 'sst2' has no default epoch count: set --config.num_epochs=N"):
        training.config.num_epochs(config, task=types.SimpleNamespace(default_epochs=0))
