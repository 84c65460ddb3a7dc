"""Training methods: LowRank trains the adapter only, FullFineTune every parameter; both answer the loop's questions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlora
from jaxlora import training
from jaxlora.training import FullFineTune, LowRank, as_method, method_from_config
from tests.training.conftest import load_config

FROZEN = {"encoder": {"query": {"kernel": np.arange(12.0, dtype=np.float32).reshape(3, 4), "bias": np.ones(4, np.float32)},
                      "value": {"kernel": np.ones((3, 4), np.float32)}}}
CFG = jaxlora.AdapterConfig("lora", rank=2, alpha=4.0, targets=("query",), exclude=(), trainable=())


def test_low_rank_starts_at_the_frozen_model_and_differentiates_the_adapter_only():
    method = LowRank(CFG)
    adapter = method.initial(jax.random.key(0), FROZEN)
    assert set(adapter.trainable) == {"lowrank", "full"} and method.device_frozen(FROZEN) is FROZEN
    merged = jaxlora.merge(FROZEN, adapter, CFG)  # b = 0 at init: W + s b a = W
    np.testing.assert_array_equal(merged["encoder"]["query"]["kernel"], FROZEN["encoder"]["query"]["kernel"])

    def loss(trainable):  # through the method, as the step differentiates it
        params = jaxlora.merge(FROZEN, jaxlora.Adapter(trainable, adapter.fixed), CFG)
        return jnp.sum(jnp.ones((2, 3)) @ params["encoder"]["query"]["kernel"])

    grads = jax.grad(loss)(adapter.trainable)["lowrank"]["encoder"]["query"]
    # LoRA at init (b = 0): dL/db = s * a^T x^T 1 is non-zero, dL/da = s * b^T (...) is zero.
    assert float(jnp.abs(grads["b"]).sum()) > 0 and float(jnp.abs(grads["a"]).sum()) == 0.0
    counts = method.counts(adapter, FROZEN)
    assert counts.lowrank == 3 * 2 + 2 * 4 and counts.full == 0 and counts.frozen == 12 + 4 + 12
    assert "query" in method.describe(FROZEN, adapter)


def test_full_fine_tune_trains_every_parameter_with_no_frozen_argument():
    method = FullFineTune()
    adapter = method.initial(None, FROZEN)
    assert method.device_frozen(FROZEN) == {} and adapter.fixed == {}
    assert method.params({}, adapter.trainable, adapter.fixed) is adapter.trainable["full"]
    counts = method.counts(adapter, FROZEN)
    assert counts.trainable == counts.frozen == 28 and counts.lowrank == 0
    assert method.describe(FROZEN, adapter) is None and method.adapter_config is None


def test_methods_from_configs_and_from_what_callers_have():
    assert method_from_config(load_config("full")) == FullFineTune()
    lora = method_from_config(load_config("lora"))
    assert isinstance(lora, LowRank) and lora.config == training.adapter_config(load_config("lora"))
    assert as_method(None) == FullFineTune() and as_method(CFG) == LowRank(CFG) and as_method(lora) is lora
    assert hash(LowRank(CFG)) == hash(LowRank(CFG))  # static-argument friendly


def test_export_writes_what_each_method_leaves(tmp_path):
    models = pytest.importorskip("jaxlora.models")
    module, frozen = models.from_config(models.tiny_config("bert"), task="sequence_classification", num_labels=2)
    frozen = jax.device_get(frozen)
    method = LowRank(jaxlora.AdapterConfig("lora", rank=2, targets=("query", "value")))
    adapter = method.initial(jax.random.key(0), frozen)
    written = method.export(str(tmp_path / "lowrank"), module, frozen, adapter, {"task": "sst2"})
    assert sorted(written) == ["adapter", "peft_adapter"]
    loaded, loaded_config, meta = jaxlora.interop.load_adapter(written["adapter"])
    assert loaded_config == method.config and meta["task"] == "sst2"

    full = FullFineTune()
    written = full.export(str(tmp_path / "full"), module, frozen, full.initial(None, frozen), {})
    assert (tmp_path / "full" / "model" / "model.safetensors").exists() and written == {"model": str(tmp_path / "full" / "model")}
