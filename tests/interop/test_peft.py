"""PEFT interop against the real thing: transformers + PEFT in PyTorch on CPU."""

import json
import os
import warnings

import jax
import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.numpy import load_file

import jaxlora
import jaxlora.models as models
from jaxlora.interop import load_peft, save_peft

TOL = 1e-4

VARIANTS = {
    "lora": {},
    "bonly": {},
    "aonly": {},
    "condlora": {},
    "mtlora-ctcm": {"options": {"structure": "ctcm"}},
    "mtlora-dtsm-identity": {"options": {"structure": "dtsm", "init": "identity"}},
}
EXTRA_MTLORA = {"mtlora-shim": {"options": {"structure": "shim"}}, "mtlora-icfm": {"options": {"structure": "icfm"}}}
CASES = [(f, v) for f in ("bert", "roberta", "llama") for v in VARIANTS] + [("bert", v) for v in EXTRA_MTLORA]


def _perturbed(adapter, seed=3, scale=0.3):
    """Move every trained leaf off its init (zero factors, the head) so the export has something to show."""
    leaves, treedef = jax.tree.flatten(adapter.trainable)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    moved = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return adapter._replace(trainable=jax.tree.unflatten(treedef, moved))


def _config(model, name, **changes):
    variant = name.split("-")[0]
    options = {**VARIANTS, **EXTRA_MTLORA}[name]
    targets = model.square_targets if variant == "condlora" else model.targets
    settings = dict(rank=4, alpha=8.0, targets=targets, trainable=model.head, **options)
    return jaxlora.AdapterConfig(variant, **{**settings, **changes})


def _peft_model(model, folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(model.torch_base(), folder).eval()


@pytest.mark.parametrize("family,variant", CASES, ids=[f"{f}-{v}" for f, v in CASES])
def test_every_variant_exports_to_peft_with_the_same_logits(tiny_models, tmp_path, family, variant):
    model = tiny_models[family]
    cfg = _config(model, variant)
    adapter = _perturbed(jaxlora.init(jax.random.key(0), model.frozen, cfg))
    ours = model.jax_logits(jaxlora.apply(model.frozen, adapter, cfg))
    base = model.jax_logits(model.frozen)
    assert np.abs(ours - base).max() > 1e-2, "the adapter should change the logits, else the test shows nothing"

    save_peft(tmp_path / "peft", model.module, model.frozen, adapter, cfg, base_model_name_or_path=model.base_dir)
    theirs = model.torch_logits(_peft_model(model, str(tmp_path / "peft")))
    np.testing.assert_allclose(theirs, ours, atol=TOL, rtol=0)


def test_export_layout_follows_peft(tiny_models, tmp_path):
    model = tiny_models["roberta"]
    cfg = _config(model, "condlora")
    adapter = _perturbed(jaxlora.init(jax.random.key(0), model.frozen, cfg))
    save_peft(tmp_path / "peft", model.module, model.frozen, adapter, cfg, base_model_name_or_path="my/base")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["use_rslora"] is False
    assert config["target_modules"] == ["query", "value"] and config["modules_to_save"] == ["classifier"]
    assert config["base_model_name_or_path"] == "my/base"
    key = "base_model.model.roberta.encoder.layer.1.attention.self.value"
    assert tensors[key + ".lora_A.weight"].shape == (4, 32) and tensors[key + ".lora_B.weight"].shape == (32, 4)
    # CondLoRA is exported per layer: lora_B.T == theta_b @ K for that layer's frozen K.
    theta_b = np.asarray(adapter.trainable["lowrank"]["value"]["theta_b"])
    kernel = np.asarray(model.frozen["roberta"]["encoder"]["layer_1"]["attention"]["value"]["kernel"])
    np.testing.assert_allclose(tensors[key + ".lora_B.weight"].T, theta_b @ kernel, rtol=1e-5, atol=1e-6)
    # The head goes whole (PEFT's modules_to_save), in PyTorch layout.
    np.testing.assert_array_equal(
        tensors["base_model.model.classifier.out_proj.weight"],
        np.asarray(adapter.trainable["full"]["classifier"]["out_proj"]["kernel"]).T,
    )


@pytest.mark.parametrize(
    "family,changes",
    [
        ("bert", dict(rslora=True, rank_pattern={"value": 2}, alpha_pattern={"query": 3.0})),
        # The default exclude ("classifier") does not reach RoBERTa's two-layer head: exclude it by regex.
        ("roberta", dict(targets="all-linear", exclude=("re:^classifier",), rank_pattern={"intermediate/dense": 3})),
        ("llama", dict(targets="all-linear", rslora=True, alpha_pattern={"v_proj": 2.0})),
    ],
    ids=["bert-rslora-patterns", "roberta-all-linear", "llama-all-linear-rslora"],
)
def test_export_with_rslora_and_per_module_ranks(tiny_models, tmp_path, family, changes):
    model = tiny_models[family]
    cfg = _config(model, "lora", **changes)
    adapter = _perturbed(jaxlora.init(jax.random.key(0), model.frozen, cfg))
    ours = model.jax_logits(jaxlora.apply(model.frozen, adapter, cfg))
    save_peft(tmp_path / "peft", model.module, model.frozen, adapter, cfg)
    theirs = model.torch_logits(_peft_model(model, str(tmp_path / "peft")))
    np.testing.assert_allclose(theirs, ours, atol=TOL, rtol=0)
    # And back: load_peft reproduces the same adapter's function.
    loaded, loaded_cfg = load_peft(str(tmp_path / "peft"), model.module, model.frozen)
    np.testing.assert_allclose(model.jax_logits(jaxlora.apply(model.frozen, loaded, loaded_cfg)), ours, atol=TOL, rtol=0)
    assert loaded_cfg.rslora == cfg.rslora


def _torch_peft_adapter(model, folder, **lora_kwargs):
    """A PEFT adapter made in PyTorch with random non-zero factors and a randomised head, saved."""
    torch.manual_seed(0)
    base = model.torch_base()
    config = LoraConfig(
        task_type="CAUSAL_LM" if model.causal else "SEQ_CLS", init_lora_weights=False, **lora_kwargs
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(0.2 * torch.randn_like(param))
    peft_model.save_pretrained(folder)
    return peft_model.eval()


@pytest.mark.parametrize(
    "family,lora_kwargs",
    [
        ("bert", dict(r=4, lora_alpha=8, target_modules=["query", "value"], use_rslora=True, rank_pattern={"value": 2})),
        ("roberta", dict(r=3, lora_alpha=5, target_modules=["query", "key", "dense"], alpha_pattern={"key": 2})),
        ("llama", dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], modules_to_save=["lm_head"],
                       rank_pattern={"down_proj": 2})),
    ],
    ids=["bert-rslora-rank-pattern", "roberta-alpha-pattern", "llama-lm-head"],
)
def test_peft_adapter_made_in_pytorch_loads_with_the_same_logits(tiny_models, tmp_path, family, lora_kwargs):
    model = tiny_models[family]
    peft_model = _torch_peft_adapter(model, str(tmp_path / "peft"), **lora_kwargs)
    theirs = model.torch_logits(peft_model)
    assert np.abs(theirs - model.jax_logits(model.frozen)).max() > 1e-2

    adapter, cfg = load_peft(str(tmp_path / "peft"), model.module, model.frozen)
    assert cfg.variant == "lora" and cfg.rslora == lora_kwargs.get("use_rslora", False)
    assert adapter.trainable["full"], "the head (modules_to_save) is trained in full"
    np.testing.assert_allclose(model.jax_logits(jaxlora.apply(model.frozen, adapter, cfg)), theirs, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------
# Errors


@pytest.fixture(scope="module")
def bert_export(tiny_models, tmp_path_factory):
    model = tiny_models["bert"]
    cfg = _config(model, "lora")
    adapter = _perturbed(jaxlora.init(jax.random.key(0), model.frozen, cfg))
    folder = tmp_path_factory.mktemp("bert_peft") / "adapter"
    save_peft(folder, model.module, model.frozen, adapter, cfg)
    return folder


def _edited_copy(src, dst, **config_changes):
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())
    config = json.loads(open(os.path.join(dst, "adapter_config.json")).read())
    config.update(config_changes)
    with open(os.path.join(dst, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    return str(dst)


@pytest.mark.parametrize(
    "option,value",
    [
        ("use_dora", True),
        ("peft_type", "IA3"),
        ("fan_in_fan_out", True),
        ("bias", "all"),
        ("layers_to_transform", [0]),
        ("some_future_option", {"on": True}),
    ],
)
def test_unsupported_peft_option_is_a_clear_error(tiny_models, bert_export, tmp_path, option, value):
    folder = _edited_copy(bert_export, tmp_path / "edited", **{option: value})
    model = tiny_models["bert"]
    with pytest.raises(ValueError, match=rf"options jaxlora cannot load.*{option}="):
        load_peft(folder, model.module, model.frozen)


def test_adapter_for_other_module_names_is_a_clear_error(tiny_models, bert_export):
    model = tiny_models["llama"]
    with pytest.raises(ValueError, match=r"does not fit this llama model.*bert\.encoder\.layer\.0\.attention\.self\.query"):
        load_peft(str(bert_export), model.module, model.frozen)


def test_adapter_for_other_shapes_is_a_clear_error(bert_export):
    module, frozen = models.from_config(models.tiny_config("bert", hidden_size=16), num_labels=3)
    with pytest.raises(ValueError, match=r"lora_A\.weight has shape \(4, 32\).*must be \(4, 16\)"):
        load_peft(str(bert_export), module, frozen)


def test_rank_that_contradicts_the_config_is_a_clear_error(tiny_models, bert_export, tmp_path):
    folder = _edited_copy(bert_export, tmp_path / "edited", r=2)
    model = tiny_models["bert"]
    with pytest.raises(ValueError, match=r"config gives it rank 2"):
        load_peft(folder, model.module, model.frozen)


def test_native_folder_and_missing_files_are_clear_errors(tiny_models, tmp_path):
    model = tiny_models["bert"]
    cfg = _config(model, "lora")
    jaxlora.interop.save_adapter(tmp_path / "native", jaxlora.init(jax.random.key(0), model.frozen, cfg), cfg)
    with pytest.raises(ValueError, match="native jaxlora adapter.*load_adapter"):
        load_peft(str(tmp_path / "native"), model.module, model.frozen)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_peft(str(tmp_path / "nowhere"), model.module, model.frozen)


def test_export_refuses_to_overwrite_foreign_files(tiny_models, tmp_path):
    model = tiny_models["bert"]
    cfg = _config(model, "lora")
    adapter = jaxlora.init(jax.random.key(0), model.frozen, cfg)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"already holds files.*notes\.txt"):
        save_peft(tmp_path / "busy", model.module, model.frozen, adapter, cfg)
    assert os.listdir(tmp_path / "busy") == ["notes.txt"]
    # A previous export is replaced as a whole, with no temporary folder left behind.
    save_peft(tmp_path / "out", model.module, model.frozen, adapter, cfg)
    save_peft(tmp_path / "out", model.module, model.frozen, _perturbed(adapter), cfg)
    assert sorted(os.listdir(tmp_path)) == ["busy", "out"]


def test_scale_mismatch_is_folded_into_lora_b(tiny_models, monkeypatch):
    """A variant whose factors carry a scale other than PEFT's alpha/r still exports exactly."""
    import jaxlora.interop.peft as peft_interop

    model = tiny_models["bert"]
    cfg = _config(model, "lora", rslora=True)
    adapter = _perturbed(jaxlora.init(jax.random.key(0), model.frozen, cfg))
    true = jaxlora.to_lora_factors(model.frozen, adapter, cfg)
    # Same update, expressed with a scale 3x larger and b 3x smaller.
    odd = {p: jaxlora.LoraFactors(f.a, f.b / 3.0, f.scale * 3.0) for p, f in true.items()}
    monkeypatch.setattr(peft_interop, "to_lora_factors", lambda *args: odd)
    peft_config, tensors = peft_interop.peft_state_dict(model.module, model.frozen, adapter, cfg)
    peft_scale = peft_config["lora_alpha"] / np.sqrt(peft_config["r"])
    for path, f in true.items():
        key = "base_model.model." + models.hf_module_name("bert", path)
        got = peft_scale * tensors[key + ".lora_B.weight"] @ tensors[key + ".lora_A.weight"]
        np.testing.assert_allclose(got, f.scale * np.asarray(f.a @ f.b).T, rtol=1e-5, atol=1e-7)


def test_adapting_inside_the_head_of_a_classifier_is_a_clear_export_error(tiny_models, tmp_path):
    model = tiny_models["roberta"]  # classifier/dense, which PEFT's SEQ_CLS never adapts
    cfg = jaxlora.AdapterConfig("lora", rank=2, targets=("query", "dense"), exclude=(), trainable=())
    adapter = jaxlora.init(jax.random.key(0), model.frozen, cfg)
    with pytest.raises(ValueError, match=r"adapts \['classifier/dense'.*inside the classification head"):
        save_peft(tmp_path / "peft", model.module, model.frozen, adapter, cfg)
    assert not (tmp_path / "peft").exists()
