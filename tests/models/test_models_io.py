"""Saving, loading, key mapping, errors and logical axes of jaxlora.models."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

import jaxlora
import jaxlora.models as jm
from jaxlora.models.testing import padded_batch, save_torch_reference, torch_logits

TOL = 1e-5


def _logits(module, params, ids, mask):
    out = jax.jit(module.apply)({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    return np.asarray(getattr(out, "last_hidden_state", out))


@pytest.mark.parametrize(
    "family,task,auto_class,overrides",
    [
        ("bert", "sequence_classification", transformers.AutoModelForSequenceClassification, {}),
        ("roberta", "regression", transformers.AutoModelForSequenceClassification, {}),
        ("llama", "causal_lm", transformers.AutoModelForCausalLM, {"tie_word_embeddings": True}),
        ("bert", "base", transformers.AutoModel, {}),
    ],
)
def test_save_round_trip_through_transformers(tmp_path, family, task, auto_class, overrides):
    module, params = jm.from_config(jm.tiny_config(family, initializer_range=0.2, **overrides), task=task, seed=3)
    jm.save_pretrained(module, params, tmp_path)
    loaded, info = auto_class.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    loaded.eval()
    ids, mask = padded_batch(module.spec.vocab_size, module.config.pad_token_id)
    with torch.no_grad():
        out = loaded(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    theirs = out.last_hidden_state.numpy() if task == "base" else out.logits.numpy()
    ours = _logits(module, params, ids, mask)
    valid = mask == 1 if ours.ndim == 3 else slice(None)
    assert np.abs(ours - theirs)[valid].max() <= TOL
    # And back: our loader reads what we wrote, bit for bit.
    module2, params2 = jm.from_pretrained(str(tmp_path), task=task)
    assert module2.spec == module.spec
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_shape_mismatch_names_the_tensor(tmp_path):
    module, params = jm.from_config(jm.tiny_config("bert"))
    jm.save_pretrained(module, params, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        jm.from_pretrained(str(tmp_path))
    message = str(error.value)
    assert "'bert.encoder.layer.0.intermediate.dense.weight' has shape (37, 32), the model expects (40, 32)" in message
    assert "'bert.encoder.layer.1.output.dense.weight' has shape (32, 37), the model expects (32, 40)" in message


def test_missing_backbone_weight_is_an_error_and_unused_keys_warn(tmp_path):
    module, params = jm.from_config(jm.tiny_config("bert"), task="base")
    jm.save_pretrained(module, params, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["encoder.layer.1.output.dense.weight"]
    tensors["cls.predictions.bias"] = np.zeros(99, np.float32)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing.*encoder/layer_1/output/dense/kernel.*allow_missing"):
        jm.from_pretrained(str(tmp_path), task="base")
    with pytest.warns(jm.CheckpointWarning) as record:
        _, loaded = jm.from_pretrained(str(tmp_path), task="base", allow_missing=True)
    messages = " ".join(str(w.message) for w in record)
    assert "cls.predictions.bias" in messages and "encoder.layer.1.output.dense.weight" in messages
    assert loaded["encoder"]["layer_1"]["output"]["dense"]["kernel"].shape == (37, 32)


def test_sharded_safetensors_and_pytorch_bin(tmp_path):
    config = jm.tiny_config("llama", initializer_range=0.2)
    reference = save_torch_reference(transformers.LlamaForCausalLM, config, tmp_path / "single")
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    (tmp_path / "bin").mkdir()
    (tmp_path / "single" / "config.json").replace(tmp_path / "bin" / "config.json")
    state = {k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()}
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    ids, mask = padded_batch(config.vocab_size, config.pad_token_id)
    expected = torch_logits(reference, ids, mask)
    module, params = jm.from_pretrained(str(tmp_path / "sharded"))
    assert np.abs(_logits(module, params, ids, mask) - expected)[mask == 1].max() <= TOL
    # bf16 weights in a pickle, loaded in fp32: exactly the bf16 values.
    module, params = jm.from_pretrained(str(tmp_path / "bin"))
    np.testing.assert_array_equal(
        np.asarray(params["lm_head"]["kernel"]), state["lm_head.weight"].float().numpy().T
    )


def test_offline_hub_id_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OSError, match="Pass a local folder"):
        jm.from_pretrained("FacebookAI/roberta-base")
    with pytest.raises(OSError, match="Pass a local folder"):
        jm.load_tokenizer("FacebookAI/roberta-base")
    assert time.perf_counter() - start < 5.0
    with pytest.raises(FileNotFoundError, match="not a folder"):
        jm.from_pretrained("./no/such/folder")


@pytest.mark.parametrize(
    "family,task,hf_class",
    [
        ("bert", "sequence_classification", transformers.BertForSequenceClassification),
        ("roberta", "sequence_classification", transformers.RobertaForSequenceClassification),
        ("llama", "causal_lm", transformers.LlamaForCausalLM),
        ("llama", "sequence_classification", transformers.LlamaForSequenceClassification),
    ],
)
def test_module_names_match_the_torch_task_model(family, task, hf_class):
    module, params = jm.from_config(jm.tiny_config(family), task=task)
    torch_model = hf_class(module.config)
    torch_modules = dict(torch_model.named_modules())
    flat = jm.flatten(params)
    dense_paths = sorted({path[:-1] for path in flat if path[-1] == "kernel"})
    for path in dense_paths:
        name = jm.hf_module_name(family, path)
        assert isinstance(torch_modules[name], torch.nn.Linear), name
        assert jm.module_path_from_hf(family, name) == path
    # Every HF tensor has exactly one param here, and converting back restores the tree.
    state_dict = jm.params_to_hf(family, params)
    tied = {"lm_head.weight"} if module.config.tie_word_embeddings else set()
    assert set(state_dict) == set(torch_model.state_dict()) - tied
    jax.tree.map(np.testing.assert_array_equal, jm.params_from_hf(family, state_dict), params)


def test_documented_paths():
    assert jm.hf_module_name("bert", ("bert", "encoder", "layer_0", "attention", "query")) == (
        "bert.encoder.layer.0.attention.self.query"
    )
    assert jm.hf_module_name("roberta", ("classifier", "out_proj")) == "classifier.out_proj"
    assert jm.hf_module_name("llama", ("model", "layers_0", "self_attn", "q_proj")) == "model.layers.0.self_attn.q_proj"
    assert jm.module_path_from_hf("llama", "model.layers.11.mlp.down_proj") == ("model", "layers_11", "mlp", "down_proj")


def test_logical_axes_cover_every_param():
    module, params = jm.from_config(jm.tiny_config("llama", num_key_value_heads=1), task="causal_lm")
    axes = jm.logical_axes(module, params)
    layer = axes["model"]["layers_0"]
    assert layer["self_attn"]["q_proj"]["kernel"] == P("embed", "heads")
    assert layer["self_attn"]["k_proj"]["kernel"] == P("embed", "kv")
    assert layer["self_attn"]["o_proj"]["kernel"] == P("heads", "embed")
    assert layer["mlp"]["down_proj"]["kernel"] == P("mlp", "embed")
    assert layer["input_layernorm"]["scale"] == P("embed")
    assert axes["model"]["embed_tokens"]["embedding"] == P("vocab", "embed")
    assert axes["lm_head"]["kernel"] == P("embed", "vocab")
    ranks = jax.tree.map(lambda spec, x: len(spec) == x.ndim, axes, params)
    assert all(jax.tree.leaves(ranks))

    module, params = jm.from_config(jm.tiny_config("bert"))
    axes = jm.logical_axes(module, params)
    assert axes["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"] == P("embed", "heads")
    assert axes["bert"]["encoder"]["layer_0"]["attention"]["output"]["LayerNorm"]["bias"] == P("embed")
    assert axes["classifier"]["kernel"] == P("embed", "labels")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("tensor",))
    import flax.linen as nn

    shardings = nn.logical_to_mesh_sharding(axes, mesh, [("heads", "tensor"), ("mlp", "tensor")])
    placed = jax.device_put(params, shardings)
    assert placed["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"].sharding.spec == P(None, "tensor")
    with pytest.raises(ValueError, match="params do not match"):
        jm.logical_axes(module, {"bert": params["bert"]})


def test_adapters_run_factored_inside_the_models():
    module, params = jm.from_config(jm.tiny_config("llama", initializer_range=0.2))
    config = jaxlora.AdapterConfig("lora", rank=4, alpha=8.0, targets="all-linear")
    adapter = jaxlora.init(jax.random.key(0), params, config)
    adapter = adapter._replace(trainable=jax.tree.map(lambda x: x + 0.05, adapter.trainable))
    ids, mask = padded_batch(module.spec.vocab_size, 0)

    @jax.jit
    def all_modes(params, adapter):
        run = lambda p: module.apply({"params": p}, ids, mask)
        return (
            run(jaxlora.apply(params, adapter, config, mode="factored")),
            run(jaxlora.apply(params, adapter, config, mode="merged")),
            run(params),
        )

    factored, merged, plain = map(np.asarray, all_modes(params, adapter))
    assert np.abs(factored - merged).max() <= 1e-4 * np.abs(merged).max()
    assert np.abs(factored - plain).max() > 1e-2
    with pytest.raises(ValueError, match="merge them first"):
        jm.save_pretrained(module, jaxlora.apply(params, adapter, config, mode="factored"), "unused")
