"""scan_layers=True (jaxlora/models/stack.py): the same model as unrolled, one nn.scan over stacked params.

Tiny fp32 models, dropout off: the logits and the per-layer adapter gradients equal the unrolled
model's (LoRA and CondLoRA, with a pattern that adapts one layer only), a checkpoint loads, saves
and exports to PEFT to the same keys and values, the remat policies change memory and not numbers,
and per-layer ranks that differ inside the stack are refused by name.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import jaxlora
from jaxlora import interop
from jaxlora import models as jm
from tests.models.test_remat import _residual_bytes

# (family, task, LoRA targets, CondLoRA targets): square modules for CondLoRA; "x_1/..." adapts one layer only.
CASES = {
    "bert": ("sequence_classification", ("query", "layer_1/output/dense"), ("query", "value")),
    "llama": ("causal_lm", ("q_proj", "layers_1/mlp/down_proj"), ("q_proj", "o_proj")),
}


def _models(family, **scan_options):
    task = CASES[family][0]
    config = jm.tiny_config(family, num_hidden_layers=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    unrolled, params = jm.from_config(config, task=task, num_labels=2)
    scanned, stacked = jm.from_config(config, task=task, num_labels=2, scan_layers=True, **scan_options)
    return unrolled, params, scanned, stacked


def _batch():
    ids = jnp.array([[2, 5, 6, 7, 8, 9, 10, 3], [2, 11, 12, 13, 3, 0, 0, 0]])
    return ids, (ids != 0).astype(jnp.int32)


def _loss(module, frozen, adapter, cfg):
    ids, mask = _batch()

    def loss(trainable):
        params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), cfg)
        logits = module.apply({"params": params}, ids, mask)
        return jnp.sum(logits.astype(jnp.float32) ** 2) / logits.size, logits

    return loss


def _close(got, want, tol=1e-5):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        scale = max(float(jnp.max(jnp.abs(b))), 1e-6)
        assert float(jnp.max(jnp.abs(a - b))) <= tol * scale, (float(jnp.max(jnp.abs(a - b))), scale)


@pytest.mark.parametrize("family", sorted(CASES))
def test_scan_gives_the_unrolled_logits_and_adapter_gradients(family):
    unrolled, params, scanned, stacked = _models(family)
    assert jm.layer_stacks(scanned) == (scanned.spec.layer_stack,) and jm.layer_stacks(unrolled) == ()
    jax.tree.map(np.testing.assert_array_equal, stacked, jm.stack_params(params, scanned))   # same draws, stacked
    for variant, targets in (("lora", CASES[family][1]), ("condlora", CASES[family][2])):
        cfg = jaxlora.AdapterConfig(variant, rank=4, alpha=8, targets=targets)
        stacked_cfg = cfg.replace(layer_stacks=jm.layer_stacks(scanned))
        adapter = jaxlora.init(jax.random.key(1), params, cfg)
        jax.tree.map(np.testing.assert_array_equal, jaxlora.init(jax.random.key(1), stacked, stacked_cfg), adapter)
        # b (theta_b) starts at zero; move it so the adapter changes the logits.
        adapter = adapter._replace(trainable=jax.tree.map(lambda x: x + 0.05, adapter.trainable))
        grad = lambda *args: jax.jit(jax.value_and_grad(_loss(*args), has_aux=True))(adapter.trainable)  # noqa: E731
        (_, want_logits), want = grad(unrolled, params, adapter, cfg)
        (_, logits), grads = grad(scanned, stacked, adapter, stacked_cfg)
        _close(logits, want_logits)
        assert jax.tree.structure(grads) == jax.tree.structure(want)   # per layer, as unrolled
        _close(grads, want)


def test_scan_decodes_with_the_kv_cache_like_unrolled():
    unrolled, params, scanned, stacked = _models("llama")
    ids = jnp.array([[5, 6, 7, 8]])
    assert jm.generate(scanned, stacked, ids, max_new_tokens=3).tolist() == jm.generate(
        unrolled, params, ids, max_new_tokens=3).tolist()


def test_remat_policies_under_scan_change_memory_not_gradients():
    _, _, plain, stacked = _models("llama")
    cfg = jaxlora.AdapterConfig("lora", rank=4, targets="all-linear", layer_stacks=jm.layer_stacks(plain))
    adapter = jaxlora.init(jax.random.key(1), stacked, cfg)
    adapter = adapter._replace(trainable=jax.tree.map(lambda x: x + 0.05, adapter.trainable))
    memory, grads = {}, {}
    for remat in ("none", "full", "dots_saveable"):
        module = plain.clone(spec=dataclasses.replace(plain.spec, remat=remat))
        loss = _loss(module, stacked, adapter, cfg)
        memory[remat] = _residual_bytes(lambda t: loss(t)[0], adapter.trainable)   # traced, not compiled
        if remat != "full":   # "full" is tests/models/test_remat.py's, unrolled
            grads[remat] = jax.jit(jax.grad(lambda t: loss(t)[0]))(adapter.trainable)
    _close(grads["dots_saveable"], grads["none"], tol=5e-5)   # recomputation fuses differently: rounding
    assert memory["full"] < memory["dots_saveable"] < memory["none"], memory


def test_scan_loads_saves_and_exports_peft_identically(tmp_path):
    unrolled, params, scanned, _ = _models("bert")
    folder = jm.save_pretrained(unrolled, params, str(tmp_path / "model"))
    unrolled, loaded = jm.from_pretrained(folder, num_labels=2)
    scanned, stacked = jm.from_pretrained(folder, num_labels=2, scan_layers=True)
    jax.tree.map(np.testing.assert_array_equal, jm.unstack_params(stacked, scanned), loaded)

    saved = {}
    for name, module, tree in (("unrolled", unrolled, loaded), ("scanned", scanned, stacked)):
        saved[name] = load_file(os.path.join(jm.save_pretrained(module, tree, str(tmp_path / name)), "model.safetensors"))
    assert saved["scanned"].keys() == saved["unrolled"].keys()
    jax.tree.map(np.testing.assert_array_equal, saved["scanned"], saved["unrolled"])

    cfg = jaxlora.AdapterConfig("lora", rank=2, targets=("query", "value"), trainable=("classifier",))
    stacked_cfg = cfg.replace(layer_stacks=jm.layer_stacks(scanned))
    adapter = jaxlora.init(jax.random.key(0), loaded, cfg)
    adapter = adapter._replace(trainable=jax.tree.map(lambda x: x + 0.01, adapter.trainable))
    files = {}
    for name, module, tree, config in (("unrolled", unrolled, loaded, cfg), ("scanned", scanned, stacked, stacked_cfg)):
        peft_dir = interop.save_peft(str(tmp_path / f"peft_{name}"), module, tree, adapter, config)
        native_dir = str(tmp_path / f"native_{name}")
        interop.save_adapter(native_dir, adapter, config)
        files[name] = (load_file(os.path.join(peft_dir, "adapter_model.safetensors")),
                       json.load(open(os.path.join(peft_dir, "adapter_config.json"))),
                       sorted(os.listdir(native_dir)), json.load(open(os.path.join(native_dir, "adapter_config.json"))))
    assert files["scanned"][0].keys() == files["unrolled"][0].keys()
    jax.tree.map(np.testing.assert_array_equal, files["scanned"][0], files["unrolled"][0])
    assert files["scanned"][1:] == files["unrolled"][1:]

    back, back_cfg = interop.load_peft(str(tmp_path / "peft_scanned"), scanned, stacked)
    assert back_cfg.layer_stacks == stacked_cfg.layer_stacks
    jax.tree.map(np.testing.assert_array_equal, back.trainable, interop.load_peft(
        str(tmp_path / "peft_unrolled"), unrolled, loaded)[0].trainable)


def test_scan_refuses_per_layer_ranks_that_differ_naming_the_layers():
    _, _, scanned, stacked = _models("llama")
    cfg = jaxlora.AdapterConfig("lora", rank=4, targets=("q_proj",), rank_pattern={"layers_2/self_attn/q_proj": 8},
                                layer_stacks=jm.layer_stacks(scanned))
    adapter = jaxlora.init(jax.random.key(0), stacked, cfg)
    with pytest.raises(jaxlora.UserError) as err:
        jaxlora.apply(stacked, adapter, cfg)
    message = str(err.value)
    assert "model/layers_0/self_attn/q_proj, model/layers_1/self_attn/q_proj" in message
    assert "rank 8, alpha 8: model/layers_2/self_attn/q_proj" in message and "scan_layers=False" in message


def test_stacked_quantized_kernels_scan_like_unrolled_ones():
    # Quantized per layer, then stacked: every array of a node gets the layer axis, its metadata stays one layer's.
    unrolled, params, scanned, _ = _models("llama")
    quantized = jaxlora.quantize(params, "nf4", block_size=16, skip=("lm_head",))
    stacked = jm.stack_params(quantized, scanned)
    node = stacked["model"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert node.shape == (3, 32, 64) and node.stored_shape == (32, 64)
    cfg = jaxlora.AdapterConfig("lora", rank=4, targets=CASES["llama"][1])
    stacked_cfg = cfg.replace(layer_stacks=jm.layer_stacks(scanned))
    adapter = jaxlora.init(jax.random.key(1), quantized, cfg)
    adapter = adapter._replace(trainable=jax.tree.map(lambda x: x + 0.05, adapter.trainable))
    grad = lambda *args: jax.jit(jax.value_and_grad(_loss(*args), has_aux=True))(adapter.trainable)  # noqa: E731
    (_, want_logits), want = grad(unrolled, quantized, adapter, cfg)
    (_, logits), grads = grad(scanned, stacked, adapter, stacked_cfg)
    _close(logits, want_logits)
    _close(grads, want)
