"""The torch-free config reader agrees with transformers' AutoConfig, and loading stays free of torch."""

import copy
import json
import pathlib
import subprocess
import sys
import warnings

import jax.numpy as jnp
import pytest
import torch
import transformers

import jaxlora.models as jm
from jaxlora.models import bert, llama, rope
from jaxlora.models.hf_config import HFConfig, read_config

LLAMA3_ROPE = dict(
    rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    original_max_position_embeddings=64,
)

# Folders written by transformers itself (its own serialisation of each family).
SAVED_BY_TRANSFORMERS = {
    "bert": ("bert", {}),
    "roberta": ("roberta", {"classifier_dropout": 0.3}),
    "llama_rope_llama3": ("llama", {"rope_parameters": LLAMA3_ROPE, "attention_bias": True}),
    "qwen2": ("qwen2", {"tie_word_embeddings": True}),
}

# Hand-written config.json files: class defaults, label maps, a transformers-4.x Llama 3 file.
HAND_WRITTEN = {
    "bert_defaults_num_labels": {"model_type": "bert", "num_labels": 5, "max_length": 20},
    "xlm_roberta_id2label": {
        "model_type": "xlm-roberta", "id2label": {"0": "neg", "1": "neu", "2": "pos"},
        "label2id": {"neg": 0, "neu": 1, "pos": 2}, "torch_dtype": "bfloat16",
    },
    "llama_4x_rope_scaling": {
        "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 256,
        "rope_theta": 500000.0, "torch_dtype": "bfloat16", "transformers_version": "4.43.0",
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    },
    "llama_4x_linear_type_key": {"model_type": "llama", "rope_scaling": {"type": "linear", "factor": 2.0}},
    "roberta_defaults": {"model_type": "roberta", "output_attentions": True, "_name_or_path": "elsewhere"},
    "qwen2_defaults": {"model_type": "qwen2", "rope_theta": 1000000.0, "use_sliding_window": False},
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, minilm_path) -> dict[str, str]:
    out = {"minilm": str(minilm_path)}
    for name, (family, overrides) in SAVED_BY_TRANSFORMERS.items():
        folder = tmp_path_factory.mktemp(name)
        jm.tiny_config(family, **overrides).save_pretrained(folder)
        out[name] = str(folder)
    for name, content in HAND_WRITTEN.items():
        folder = tmp_path_factory.mktemp(name)
        (folder / "config.json").write_text(json.dumps(content))
        out[name] = str(folder)
    return out


def _auto_config(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' notes on 4.x RoPE keys
        return transformers.AutoConfig.from_pretrained(folder)


def _spec(config, task, num_labels):
    family = jm.family_of(config)
    if family == "llama":
        return llama.DecoderSpec.from_hf(config, family, task, num_labels, jnp.float32, jnp.float32)
    return bert.EncoderSpec.from_hf(config, family, task, num_labels, jnp.float32, jnp.float32)


ALL_FOLDERS = ["minilm", *SAVED_BY_TRANSFORMERS, *HAND_WRITTEN]


@pytest.mark.parametrize("name", ALL_FOLDERS)
def test_reads_what_transformers_reads(folders, name):
    ours, theirs = read_config(folders[name]), _auto_config(folders[name])
    # Every attribute, defaults and derived fields included (dtype is a string in both dicts).
    assert ours.to_dict() == theirs.to_dict()
    assert ours.model_type == theirs.model_type and ours.num_labels == theirs.num_labels
    # What the jaxlora models read: the spec, for every task, and the RoPE settings.
    task = "causal_lm" if jm.family_of(theirs) == "llama" else "sequence_classification"
    assert _spec(ours, task, ours.num_labels) == _spec(theirs, task, theirs.num_labels)
    if task == "causal_lm":
        assert rope.rope_settings(ours) == rope.rope_settings(theirs)


def test_the_4x_llama3_file_gets_scaled_rope(folders):
    settings = rope.rope_settings(read_config(folders["llama_4x_rope_scaling"]))
    assert settings == {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 256,
    }


@pytest.mark.parametrize("num_labels,task", [(3, "sequence_classification"), (1, "regression"), (None, "base")])
def test_task_settings_match_transformers(folders, num_labels, task):
    ours, theirs = read_config(folders["bert"]), _auto_config(folders["bert"])
    ours, theirs = jm.build.task_config(ours, task, num_labels), jm.build.task_config(theirs, task, num_labels)
    for key in ("id2label", "label2id", "problem_type"):
        assert getattr(ours, key) == getattr(theirs, key), key
    assert ours.num_labels == theirs.num_labels


def test_behaves_like_an_attribute_object(folders):
    config = read_config(folders["minilm"])
    assert config.name_or_path == folders["minilm"] == config._name_or_path  # peft export reads _name_or_path
    assert getattr(config, "no_such_field", "fallback") == "fallback"
    clone = copy.deepcopy(config)
    clone.num_labels = 4
    assert clone.label2id == {f"LABEL_{i}": i for i in range(4)} and config.num_labels == 2
    assert clone != config and copy.deepcopy(config) == config


def test_save_pretrained_reads_back_identically_in_transformers(folders, tmp_path):
    for name in ("minilm", "llama_4x_rope_scaling", "xlm_roberta_id2label"):
        read_config(folders[name]).save_pretrained(tmp_path / name)
        again = _auto_config(tmp_path / name).to_dict()
        original = _auto_config(folders[name]).to_dict()
        again.pop("_name_or_path"), original.pop("_name_or_path")
        assert again == original, name


def test_saved_model_loads_in_transformers_with_head_and_dtype(folders, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jm.CheckpointWarning)
        torch.manual_seed(0)
        transformers.BertModel(_auto_config(folders["bert"])).save_pretrained(tmp_path / "base")
        module, params = jm.from_pretrained(str(tmp_path / "base"), num_labels=3, dtype=jnp.bfloat16)
    assert isinstance(module.config, HFConfig)
    jm.save_pretrained(module, params, tmp_path / "task")
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "task", output_loading_info=True
    )
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 3 and model.dtype == torch.bfloat16
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no 'model_type'"):
        HFConfig.from_dict({"hidden_size": 8})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        jm.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        read_config(tmp_path / "..")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config(tmp_path)


def test_minilm_tokenizer_is_the_one_autotokenizer_gives():
    ours, theirs = jm.load_tokenizer("minilm-l6"), transformers.AutoTokenizer.from_pretrained(jm.resolve("minilm-l6"))
    assert type(ours) is type(theirs)
    pair = (["A film, with feeling!"], ["Not at all."])
    kwargs = dict(padding="max_length", max_length=16, truncation=True, return_tensors="np")
    a, b = ours(*pair, **kwargs), theirs(*pair, **kwargs)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_loading_minilm_and_its_tokenizer_does_not_import_torch():
    code = (
        "import sys, warnings; warnings.simplefilter('ignore'); import jaxlora.models as m; "
        "m.from_pretrained('minilm-l6', task='sequence_classification', num_labels=2); "
        "print('torch' in sys.modules); m.load_tokenizer('minilm-l6'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=pathlib.Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
