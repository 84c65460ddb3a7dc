"""jaxlora's native adapter format: exact round trips, compact CondLoRA, clear errors, atomic writes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

import jaxlora
from jaxlora.interop import load_adapter, save_adapter
from jaxlora.interop.native import trees_equal
from tests.adapters.helpers import ALL_VARIANTS, VARIANT_IDS

LORA_FIELDS = {"rslora": True, "rank_pattern": {"value": 2}, "alpha_pattern": {"query": 3.0}, "dropout": 0.1}
VARIANTS = ALL_VARIANTS + [("lora", LORA_FIELDS)]
IDS = VARIANT_IDS + ["lora-fields"]


def _moved(adapter, seed=5):
    leaves, treedef = jax.tree.flatten(adapter.trainable)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return adapter._replace(
        trainable=jax.tree.unflatten(treedef, [x + jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    )


@pytest.mark.parametrize("variant,options", VARIANTS, ids=IDS)
def test_round_trip_is_bit_exact_for_every_variant(tiny_models, tmp_path, variant, options):
    model = tiny_models["bert"]
    cfg = jaxlora.AdapterConfig(variant, rank=4, alpha=8.0, trainable=("classifier",), **options)
    adapter = _moved(jaxlora.init(jax.random.key(0), model.frozen, cfg))
    save_adapter(tmp_path / "adapter", adapter, cfg, metadata={"base_model": model.base_dir, "step": 7})

    loaded, loaded_cfg, metadata = load_adapter(str(tmp_path / "adapter"))
    assert loaded_cfg == cfg
    assert metadata == {"base_model": model.base_dir, "step": 7}
    assert jax.tree.structure(loaded) == jax.tree.structure(adapter)
    assert trees_equal(loaded, adapter)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(loaded))


def test_condlora_stays_compact(tiny_models, tmp_path):
    model = tiny_models["roberta"]
    cfg = jaxlora.AdapterConfig("condlora", rank=4, alpha=8.0)
    adapter = jaxlora.init(jax.random.key(0), model.frozen, cfg)
    save_adapter(tmp_path / "adapter", adapter, cfg)
    with safe_open(str(tmp_path / "adapter" / "adapter.safetensors"), "np") as f:
        keys = sorted(f.keys())
        stored = sum(f.get_tensor(k).size for k in keys)
    # One shared map pair per module type, nothing per layer.
    assert keys == [f"trainable/lowrank/{m}/{t}" for m in ("query", "value") for t in ("theta_a", "theta_b")]
    assert stored == jaxlora.count_params(adapter).lowrank == 2 * 2 * 4 * 32


def test_fixed_factors_and_dtypes_survive(tiny_models, tmp_path):
    model = tiny_models["llama"]
    cfg = jaxlora.AdapterConfig("bonly", rank=4, targets=("q_proj",))
    adapter = jaxlora.init(jax.random.key(0), model.frozen, cfg)
    # A bf16 trainable tree (as a user might keep it) must come back as bf16, same bits.
    adapter = adapter._replace(trainable=jax.tree.map(lambda x: x.astype(jnp.bfloat16) + 1, adapter.trainable))
    save_adapter(tmp_path / "adapter", adapter, cfg)
    loaded, _, _ = load_adapter(str(tmp_path / "adapter"))
    assert trees_equal(loaded, adapter)
    assert loaded.fixed["model"]["layers_0"]["self_attn"]["q_proj"]["a"].shape == (32, 4)
    assert loaded.trainable["full"] == {}


@pytest.fixture
def saved(tiny_models, tmp_path):
    cfg = jaxlora.AdapterConfig("lora", rank=2)
    adapter = jaxlora.init(jax.random.key(0), tiny_models["bert"].frozen, cfg)
    save_adapter(tmp_path / "adapter", adapter, cfg)
    return tmp_path / "adapter", adapter, cfg


def _edit_config(folder, change):
    path = folder / "adapter_config.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_files_written_before_options_moved_into_the_variants_still_load(tiny_models, tmp_path):
    # Until options became the variants' own, AdapterConfig.to_dict() wrote them flat, for every variant.
    cfg = jaxlora.AdapterConfig("mtlora", rank=2, options={"structure": "ctcm", "init": "identity"})
    adapter = jaxlora.init(jax.random.key(0), tiny_models["bert"].frozen, cfg)
    save_adapter(tmp_path / "adapter", adapter, cfg)

    def old_format(document):
        config = document["config"]
        del config["options"]
        config.update(structure="ctcm", mtlora_init="identity", rectangular=False)

    _edit_config(tmp_path / "adapter", old_format)
    loaded, loaded_cfg, _ = load_adapter(str(tmp_path / "adapter"))
    assert loaded_cfg == cfg and trees_equal(loaded, adapter)


def test_load_errors_say_what_is_wrong(saved, tmp_path):
    folder, _, _ = saved
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_adapter(str(tmp_path / "nowhere"))

    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*corrupt"):
        load_adapter(str(folder))


def test_unknown_version_and_foreign_configs(saved):
    folder, _, _ = saved
    _edit_config(folder, lambda d: d.update(format_version=99))
    with pytest.raises(ValueError, match="format version 99.*reads version 1"):
        load_adapter(str(folder))
    _edit_config(folder, lambda d: (d.clear(), d.update(peft_type="LORA", r=8)))
    with pytest.raises(ValueError, match="PEFT adapter.*load_peft"):
        load_adapter(str(folder))


def test_missing_or_corrupt_weights(saved):
    folder, _, _ = saved
    (folder / "adapter.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        load_adapter(str(folder))
    os.remove(folder / "adapter.safetensors")
    with pytest.raises(FileNotFoundError, match="adapter's arrays are missing"):
        load_adapter(str(folder))


def test_failed_save_leaves_the_previous_adapter_and_no_temporary_files(saved, tmp_path):
    folder, adapter, cfg = saved
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_adapter(folder, adapter, cfg, metadata={"bad": object()})
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    assert sorted(os.listdir(tmp_path)) == ["adapter"]

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="already holds files"):
        save_adapter(tmp_path / "other", adapter, cfg)
    assert os.listdir(tmp_path / "other") == ["keep.txt"]


def test_garbled_tensor_bytes_that_still_parse_are_caught_by_the_digest(saved):
    folder, adapter, cfg = saved
    weights = folder / "adapter.safetensors"
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")  # safetensors: u64 header length, JSON header, raw bytes
    for at in range(header + 100, min(header + 4196, len(data))):  # up to 4 KB XOR-ed inside the tensor bytes: still valid safetensors
        data[at] ^= 0x5A
    weights.write_bytes(data)
    with safe_open(str(weights), framework="numpy") as f:  # the file format itself notices nothing
        assert list(f.keys())
    with pytest.raises(jaxlora.errors.ModelLoadError, match=r"adapter.safetensors does not match the digest .* "
                                                            r"tensor\(s\) differ from what was saved .*corrupt"):
        load_adapter(str(folder))


def test_top_level_variant_must_agree_with_the_config(saved):
    folder, _, _ = saved
    _edit_config(folder, lambda d: d.update(variant="condlora"))
    with pytest.raises(ValueError, match="names variant 'condlora' at the top level but 'lora' in its config"):
        load_adapter(str(folder))


def test_an_adapter_written_before_digests_loads_unchecked(saved):
    folder, adapter, _ = saved
    _edit_config(folder, lambda d: d.pop("digest"))
    assert trees_equal(load_adapter(str(folder))[0], adapter)
