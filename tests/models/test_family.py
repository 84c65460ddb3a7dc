"""The family records and their registry: lookups by name, module, spec and config; clear errors."""

import dataclasses

import pytest

import jaxlora.models as jm
from jaxlora.models.family import HFType, ModelFamily, get_family, register_family, unregister_family
from jaxlora.models.hf_config import HFConfig


def test_every_kind_of_object_finds_its_record():
    module = jm.build_module(jm.tiny_config("roberta"), "sequence_classification")
    roberta = get_family("roberta")
    assert get_family(module) is get_family(module.spec) is roberta
    assert get_family(HFConfig.from_dict({"model_type": "xlm-roberta"})) is roberta
    assert get_family(jm.tiny_config("qwen2")) is get_family("llama") is get_family(get_family("llama"))


def test_the_built_in_records_state_what_the_models_take():
    assert get_family("bert").input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert get_family("llama").input_names == ("input_ids", "attention_mask")
    assert {f: get_family(f).default_task for f in ("bert", "roberta", "llama")} == {
        "bert": "sequence_classification", "roberta": "sequence_classification", "llama": "causal_lm"}
    assert get_family("llama").peft_task_types["causal_lm"] == "CAUSAL_LM"
    assert "causal_lm" not in get_family("bert").peft_task_types


def test_unknown_model_type_lists_the_supported_ones():
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not supported.*bert, llama, .*qwen2.*register_family"):
        jm.from_config(HFConfig.from_dict({"model_type": "gpt2"}))


def test_a_model_type_belongs_to_one_family():
    thief = dataclasses.replace(get_family("bert"), name="thief", hf_types=(HFType("roberta", "Roberta"),))
    with pytest.raises(ValueError, match="'roberta' is already read by family 'roberta'"):
        register_family(thief)
    assert "thief" not in jm.families() and get_family(jm.tiny_config("roberta")).name == "roberta"


def test_registering_and_unregistering_updates_every_view():
    record = dataclasses.replace(get_family("llama"), name="llama-copy", hf_types=(HFType("llama-copy", "LlamaCopy"),))
    register_family(record)
    try:
        assert "llama-copy" in jm.FAMILIES and jm.BACKBONE_PREFIX["llama-copy"] == "model"
        assert get_family(HFConfig.from_dict({"model_type": "llama-copy"})) is record
    finally:
        unregister_family("llama-copy")
    assert "llama-copy" not in jm.FAMILIES
    with pytest.raises(ValueError, match="Unknown model family 'llama-copy'"):
        get_family("llama-copy")


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(default_task="causal_lm"), "default_task 'causal_lm' is not one of"),
        (dict(input_names=("attention_mask", "input_ids")), "must start with"),
        (dict(peft_task_types={"causal_lm": "CAUSAL_LM"}), "tasks it does not have"),
    ],
)
def test_inconsistent_records_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(get_family("bert"), **change)


def test_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_family("bert").prefix = "encoder"
    assert isinstance(get_family("bert"), ModelFamily)


def test_an_encoder_family_picks_its_positions_pooler_and_head_by_its_record_options():
    from jaxlora.models.bert import EncoderOptions

    # A BERT with RoBERTa's classification head and no pooler: options of the record, no code.
    register_family(dataclasses.replace(
        get_family("bert"), name="bert-mlp-head", hf_types=(HFType("bert-mlp-head", "BertMlpHead"),),
        module_options=EncoderOptions(task_pooler=False, head="first_token_mlp"),
    ))
    try:
        config = jm.tiny_config("bert")
        config.model_type = "bert-mlp-head"
        module, params = jm.from_config(config, task="sequence_classification")
        assert sorted(params["classifier"]) == ["dense", "out_proj"] and "pooler" not in params["bert"]
        assert module.spec.options.positions == "absolute"
    finally:
        unregister_family("bert-mlp-head")
    assert get_family("roberta").module_options == EncoderOptions("after_padding", False, "first_token_mlp")
    with pytest.raises(ValueError, match="EncoderOptions.head='mean'"):
        EncoderOptions(head="mean")
