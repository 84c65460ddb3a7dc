"""Merged export: transformers alone (no PEFT) reproduces the adapted jaxlora model."""

import os

import jax
import numpy as np
import pytest

import jaxlora
from jaxlora.interop import save_merged

CASES = [("bert", "condlora", {}), ("roberta", "mtlora", {"options": {"structure": "icfm"}}), ("llama", "bonly", {})]


@pytest.mark.parametrize("family,variant,options", CASES, ids=[f"{f}-{v}" for f, v, _ in CASES])
def test_merged_checkpoint_gives_the_same_logits_in_transformers(tiny_models, tmp_path, family, variant, options):
    model = tiny_models[family]
    targets = model.square_targets if variant == "condlora" else model.targets
    cfg = jaxlora.AdapterConfig(variant, rank=4, alpha=8.0, targets=targets, trainable=model.head, **options)
    adapter = jaxlora.init(jax.random.key(0), model.frozen, cfg)
    leaves, treedef = jax.tree.flatten(adapter.trainable)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    adapter = adapter._replace(
        trainable=jax.tree.unflatten(treedef, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    )
    ours = model.jax_logits(jaxlora.apply(model.frozen, adapter, cfg))
    assert np.abs(ours - model.jax_logits(model.frozen)).max() > 1e-2

    save_merged(tmp_path / "merged", model.module, model.frozen, adapter, cfg)
    assert sorted(os.listdir(tmp_path / "merged")) == ["config.json", "model.safetensors"]
    merged_model = model._replace(base_dir=str(tmp_path / "merged"))
    np.testing.assert_allclose(merged_model.torch_logits(merged_model.torch_base()), ours, atol=1e-4, rtol=0)
