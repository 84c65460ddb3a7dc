"""A family registered from one file outside jaxlora/models (tests/models/mistral_family.py) loads,
saves and matches transformers' Mistral on a tiny random config."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import jaxlora.models as jm
from jaxlora import AdapterConfig, init
from jaxlora.interop import peft_state_dict
from jaxlora.models.family import register_family, unregister_family
from jaxlora.models.hf_config import read_config
from jaxlora.models.testing import padded_batch, save_torch_reference, torch_logits

TOL = 2e-5


@pytest.fixture(scope="module")
def mistral():
    family = importlib.import_module("tests.models.mistral_family").MISTRAL
    register_family(family)  # again, in case an earlier test module unregistered it
    yield family
    unregister_family("mistral")


def tiny_mistral(**overrides):
    kwargs = dict(
        vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, initializer_range=0.2,
        sliding_window=None,
    )
    return transformers.MistralConfig(**{**kwargs, **overrides})


def test_the_registry_reads_the_new_record(mistral):
    assert "mistral" in jm.FAMILIES and jm.BACKBONE_PREFIX["mistral"] == "model"
    assert jm.get_family(tiny_mistral()) is mistral and jm.family_of(tiny_mistral()) == "mistral"
    assert mistral.input_names == ("input_ids", "attention_mask")
    assert jm.hf_module_name("mistral", ("model", "layers_1", "mlp", "up_proj")) == "model.layers.1.mlp.up_proj"


def test_config_json_reads_like_transformers(mistral, tmp_path):
    tiny_mistral(num_labels=3, rms_norm_eps=1e-5).save_pretrained(tmp_path)
    ours, theirs = read_config(tmp_path), transformers.AutoConfig.from_pretrained(tmp_path)
    assert ours.to_dict() == theirs.to_dict()


@pytest.mark.parametrize(
    "task,hf_class,num_labels",
    [("causal_lm", transformers.MistralForCausalLM, 2), ("sequence_classification",
                                                          transformers.MistralForSequenceClassification, 3)],
)
def test_loads_saves_and_matches_transformers(mistral, tmp_path, task, hf_class, num_labels):
    config = tiny_mistral(num_labels=num_labels)
    reference = save_torch_reference(hf_class, config, tmp_path / "torch")
    ids, mask = padded_batch(config.vocab_size, config.pad_token_id)
    expected = torch_logits(reference, ids, mask)

    module, params = jm.from_pretrained(str(tmp_path / "torch"), task=task)
    assert module.spec.family == "mistral" and module.spec.task == task
    logits = np.asarray(module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    rows = mask == 1 if task == "causal_lm" else slice(None)
    assert np.abs(logits - expected)[rows].max() <= TOL

    jm.save_pretrained(module, params, str(tmp_path / "ours"))
    model, info = hf_class.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert model.config.architectures == [hf_class.__name__]
    assert not info["missing_keys"] and not info["unexpected_keys"]
    np.testing.assert_allclose(torch_logits(model.eval(), ids, mask), expected, atol=1e-6)


def test_a_sliding_window_is_refused_with_the_fix(mistral):
    with pytest.raises(ValueError, match="sliding_window=16 is shorter than max_position_embeddings=128.*None"):
        jm.from_config(tiny_mistral(sliding_window=16))


def test_peft_export_names_the_task_from_the_record(mistral):
    module, frozen = jm.from_config(tiny_mistral())
    cfg = AdapterConfig("lora", rank=2, targets=("q_proj", "v_proj"))
    peft_config, tensors = peft_state_dict(module, frozen, init(jax.random.key(0), frozen, cfg), cfg)
    assert peft_config["task_type"] == "CAUSAL_LM"
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in tensors
