"""Values that type-check but cannot train are refused up front, each in one line naming its field."""

import re

import jax
import pytest

from jaxlora import errors, training
from jaxlora.training import config as config_lib
from tests.training.conftest import load_config

BAD_VALUES = [
    ("optimizer.learning_rate", -0.001, r"config.optimizer.learning_rate=-0.001 must be positive .*no magic negative"),
    ("optimizer.learning_rate", 0.0, r"config.optimizer.learning_rate=0.0 must be positive"),
    ("optimizer.learning_rate", "fast", r"config.optimizer.learning_rate must be a number, got 'fast'"),
    ("lora.alpha", 0.0, r"config.lora.alpha=0.0 must be positive"),
    ("lora.alpha", -8.0, r"config.lora.alpha=-8.0 must be positive"),
    ("lora.dropout", 1.0, r"config.lora.dropout=1.0 must be in \[0, 1\)"),
    ("lora.dropout", -0.1, r"config.lora.dropout=-0.1 must be in \[0, 1\)"),
    ("optimizer.warmup_ratio", 1.0, r"config.optimizer.warmup_ratio must be in \[0, 1\), got 1.0"),
    ("optimizer.warmup_ratio", -0.5, r"config.optimizer.warmup_ratio must be in \[0, 1\), got -0.5"),
    # Inheriting fields are None when unset; the old -1 sentinel is refused, with the way to say "inherit".
    ("optimizer.lowrank_learning_rate", -1.0,
     r"config.optimizer.lowrank_learning_rate=-1.0 must be a positive number, or None for the base learning rate"),
    ("optimizer.full_learning_rate", 0.0, r"config.optimizer.full_learning_rate=0.0 must be a positive number"),
    ("model_dropout", -1.0, r"config.model_dropout=-1.0 must be a number in \[0, 1\), or None for the checkpoint's"),
    ("model_dropout", 1.0, r"config.model_dropout=1.0 must be a number in \[0, 1\)"),
    ("mesh.data", jax.device_count() + 1, r"config.mesh: The mesh data=\d+ x fsdp=1 x tensor=1 needs \d+ devices"),
    ("mesh.fsdp", jax.device_count() + 1, r"config.mesh: .*do not divide the \d+ available devices"),
]


def _set(config, dotted, value):
    node = config
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = node[name]
    node[leaf] = value


@pytest.mark.parametrize("field,value,message", BAD_VALUES, ids=[f"{f}={v}" for f, v, _ in BAD_VALUES])
def test_each_bad_value_is_refused_in_one_line(field, value, message):
    config = load_config("lora", "offline")
    _set(config, field, value)
    with pytest.raises(errors.ConfigError, match=message) as err:
        training.validate(config)
    assert "\n" not in str(err.value) and err.value.hint
    assert isinstance(err.value, ValueError)  # callers catching ValueError still do


def test_the_task_sentinel_takes_the_task_rate_and_needs_an_entry():
    config = load_config("condlora")  # the protocol: learning_rate = "task"
    assert config.optimizer.learning_rate == config_lib.TASK_LEARNING_RATE
    training.validate(config)
    assert config_lib.learning_rate(config) == pytest.approx(4.14e-4)
    config.optimizer.task_learning_rates = {"rte": 1.62e-4}
    with pytest.raises(errors.ConfigError, match=r"'task' takes the task's rate, but .* no entry for 'sst2'"):
        training.validate(config)


def test_several_problems_are_listed_in_one_message():
    config = load_config("lora", "offline")
    config.lora.alpha, config.lora.dropout = 0.0, 2.0
    with pytest.raises(errors.ConfigError, match=r"\(2 problems\): \(1\) config.lora.alpha=0.0 .* \(2\) config.lora"):
        training.validate(config)


def test_a_diverging_loss_stops_naming_the_step_and_the_learning_rate(tiny_factory, tmp_path):
    # lr 1e3: the loss leaves its first value far behind within a step or two, yet stays finite.
    config = tiny_factory("lora", **{"optimizer.learning_rate": 1e3, "optimizer.warmup_ratio": 0.0,
                                     "max_steps": 8, "eval_every": 8, "divergence.steps": 2})
    with pytest.raises(training.DivergenceError) as err:
        training.train(config, tmp_path / "run")
    assert err.value.message.startswith("The training loss diverged: ")
    assert re.search(r"at step (\d+) \(learning rate [\d.e+]+ of the configured 1e\+03\), over 10x the first logged loss 0\.\d+ for 2 steps "
                     r"in a row: training stopped\.", err.value.message), err.value.message
    assert "--config.divergence.steps=0" in err.value.hint
    assert not (tmp_path / "run" / "results.json").exists()


def test_inheriting_fields_are_none_by_default_and_take_numbers_from_the_command_line():
    from absl import flags
    from ml_collections import config_flags

    from jaxlora.training import optim
    from tests.training.conftest import REPO

    config = load_config("lora", "offline")
    assert (config.optimizer.lowrank_learning_rate, config.optimizer.full_learning_rate, config.model_dropout) == (
        None, None, None)
    spec = optim.optimizer_spec(config, 2e-4)  # None: each group trains at the base rate
    assert (spec.group_rate("lowrank"), spec.group_rate("full")) == (2e-4, 2e-4)

    argv = ["train.py", f"--config={REPO / 'configs' / 'lora_sst2.py'}:offline",
            "--config.optimizer.full_learning_rate=1e-3", "--config.model_dropout=0"]
    values = flags.FlagValues()  # train.py's flag, on a flag set of its own
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    values(argv)
    parsed = values.config
    training.validate(parsed)
    assert parsed.optimizer.full_learning_rate == 1e-3 and parsed.model_dropout == 0.0  # typed: "0" is 0.0
    assert parsed.optimizer.lowrank_learning_rate is None
    spec = optim.optimizer_spec(parsed, 2e-4)
    assert (spec.group_rate("lowrank"), spec.group_rate("full")) == (2e-4, 1e-3)
