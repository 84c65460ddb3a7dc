"""jaxlora.quantize (QLoRA): blockwise int8 / nf4 frozen kernels that every layer dequantizes on the fly.

Against the math: each block round-trips within its quantisation step; LoRA (and every variant) on a
quantized base is exactly LoRA on dequantize(quantize(K)); the bytes are the format's; gradients reach
only the adapter; train.py runs with --config.frozen_quant=nf4 and exports what an unquantized run does.
"""

import json
import os
import pathlib
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlora
from jaxlora.nn.quantize import NF4_LEVELS, QuantizedKernel, dequantize, quantize, quantized_paths
from tests.adapters.helpers import builtin_variants, perturbed, tiny_model

KINDS = ("int8", "nf4")


def _blocks(w, block):
    return np.asarray(w, np.float64).reshape(*w.shape[:-1], -1, block)


def _kernel(shape=(6, 128), seed=0):
    # Blocks of very different magnitudes, so a scale shared across blocks would show.
    w = jax.random.normal(jax.random.key(seed), shape)
    return w * jnp.repeat(jnp.logspace(-3, 1, shape[-1] // 32), 32)


def test_int8_round_trips_each_block_within_half_a_step():
    w = _kernel()
    back = _blocks(dequantize(quantize(w, "int8", block_size=32)), 32)
    absmax = np.max(np.abs(_blocks(w, 32)), axis=-1, keepdims=True)
    err = np.abs(back - _blocks(w, 32))
    assert np.all(err <= absmax / 254 * (1 + 1e-5) + 1e-12)
    assert np.all(err.max(-1) > 0)  # not a no-op
    # The absmax itself (and zero) round-trip exactly.
    np.testing.assert_array_equal(np.max(np.abs(back), -1, keepdims=True), absmax.astype(np.float32))


def test_nf4_rounds_each_number_to_its_nearest_level_of_its_block():
    w = _kernel()
    node = quantize(w, "nf4", block_size=32)
    back = _blocks(dequantize(node), 32)
    blocks = _blocks(w, 32)
    absmax = np.max(np.abs(blocks), axis=-1, keepdims=True)
    levels = np.asarray(NF4_LEVELS)
    nearest = np.min(np.abs(blocks[..., None] / absmax[..., None] - levels), axis=-1) * absmax
    err = np.abs(back - blocks)
    np.testing.assert_allclose(err, nearest, rtol=1e-5, atol=1e-7 * absmax.max())
    # Within the step: half the widest gap between neighbouring levels, times the block's absmax.
    assert np.all(err <= np.max(np.diff(levels)) / 2 * absmax * (1 + 1e-5))
    # The levels themselves are exact, and two codes share each byte.
    exact = jnp.asarray(np.tile(levels, 4).reshape(2, 32) * 3.0, jnp.float32)
    np.testing.assert_array_equal(dequantize(quantize(exact, "nf4", block_size=16)), exact)
    assert node.codes.dtype == jnp.uint8 and node.codes.shape == (6, 64)


@pytest.mark.parametrize("kind", KINDS)
def test_bytes_of_quantized_kernels_against_bf16(kind):
    frozen = {"mlp": {"kernel": jnp.ones((256, 512), jnp.bfloat16)}, "ln": {"scale": jnp.ones(512, jnp.bfloat16)}}
    q = quantize(frozen, kind)
    ratio = q["mlp"]["kernel"].nbytes / frozen["mlp"]["kernel"].nbytes
    # Scales in float32: int8 (1 + 4/64) / 2, nf4 (0.5 + 4/64) / 2 bytes per number of a bf16 kernel.
    assert ratio == pytest.approx({"int8": 0.53, "nf4": 0.28}[kind], abs=0.005)
    assert quantized_paths(q) == ("mlp/kernel",) and q["ln"]["scale"].dtype == jnp.bfloat16
    assert q["mlp"]["kernel"].dtype == jnp.bfloat16 and dequantize(q)["mlp"]["kernel"].dtype == jnp.bfloat16
    # Abstract params give abstract nodes of the same bytes (what a plan reads).
    abstract = jax.eval_shape(lambda t: quantize(t, kind), frozen)
    assert abstract["mlp"]["kernel"].nbytes == q["mlp"]["kernel"].nbytes


def test_a_stack_of_layers_is_one_node_with_a_leading_axis_on_every_array():
    kernels = [_kernel((8, 64), seed) for seed in range(3)]
    nodes = [quantize(k, "nf4", block_size=16) for k in kernels]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *nodes)
    assert stacked.lead_shape == (3,) and stacked.shape == (3, 8, 64) and stacked.scales.shape == (3, 8, 4)
    np.testing.assert_array_equal(dequantize(stacked), jnp.stack([dequantize(n) for n in nodes]))
    # What nn.scan does: each step sees one layer's node.
    x = jnp.ones((2, 8))
    _, ys = jax.lax.scan(lambda c, node: (c, x @ node.astype(jnp.float32)), None, stacked)
    np.testing.assert_array_equal(ys, jnp.stack([x @ dequantize(n) for n in nodes]))


def _quantized_tiny(kind):
    model, frozen, x = tiny_model(width=16)
    q = quantize(frozen, kind, block_size=16, skip=("classifier",))
    return model, q, dequantize(q), x


def _config(variant):
    return jaxlora.AdapterConfig(variant, rank=4, alpha=8.0, targets=("query", "value", "intermediate"),
                                 options={"rectangular": True} if variant == "condlora" else None)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_on_a_quantized_base_is_lora_on_its_dequantized_kernels(kind):
    model, q, deq, x = _quantized_tiny(kind)
    assert len(quantized_paths(q)) == 8 and "classifier/kernel" not in quantized_paths(q)
    cfg = _config("lora")
    adapter = perturbed(jaxlora.init(jax.random.key(1), q, cfg))
    forward = jax.jit(lambda frozen, mode: model.apply({"params": jaxlora.apply(frozen, adapter, cfg, mode)}, x),
                      static_argnums=1)
    on_quantized = forward(q, "factored")
    np.testing.assert_array_equal(on_quantized, forward(deq, "factored"))
    np.testing.assert_allclose(on_quantized, forward(deq, "merged"), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", builtin_variants())
def test_every_variant_trains_on_a_quantized_base_with_gradients_only_in_the_adapter(variant):
    model, q, deq, x = _quantized_tiny("nf4")
    cfg = _config(variant)
    adapter = perturbed(jaxlora.init(jax.random.key(1), q, cfg))

    def loss(trainable, frozen):
        params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), cfg)
        return jnp.sum(model.apply({"params": params}, x) ** 2)

    grads, frozen_grads = jax.jit(jax.grad(loss, argnums=(0, 1), allow_int=True))(adapter.trainable, q)
    reference = jax.jit(jax.grad(loss))(adapter.trainable, deq)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads["lowrank"]))
    # The frozen side gets nothing: integer codes have no cotangent (float0), the scales a zero one.
    nodes = [n for n in jax.tree.leaves(frozen_grads, is_leaf=lambda n: isinstance(n, QuantizedKernel))
             if isinstance(n, QuantizedKernel)]
    assert len(nodes) == 8
    for node in nodes:
        assert node.codes.dtype == jax.dtypes.float0 and not np.any(node.scales)


def test_condlora_reads_its_kernels_dequantized():
    model, q, deq, x = _quantized_tiny("int8")
    cfg = _config("condlora")
    adapter = perturbed(jaxlora.init(jax.random.key(1), q, cfg))
    on_q, on_deq = jaxlora.to_lora_factors(q, adapter, cfg), jaxlora.to_lora_factors(deq, adapter, cfg)
    for path in on_q:
        np.testing.assert_array_equal(on_q[path].a, on_deq[path].a)
    assert jaxlora.count_params(adapter, q).frozen == jaxlora.count_params(adapter, deq).frozen


class _Heads(nn.Module):
    """Multi-axis stock Flax layers: a (d, heads, head_dim) projection and its (heads, head_dim, d) output."""

    @nn.compact
    def __call__(self, x):
        h = nn.DenseGeneral((2, 8), name="query")(x)
        return nn.DenseGeneral(16, axis=(-2, -1), name="out")(jnp.tanh(h)) + nn.Dense(16, name="plain")(x)


def test_stock_flax_layers_run_quantized_kernels_inside_intercept():
    model, x = _Heads(), jax.random.normal(jax.random.key(0), (3, 16))
    frozen = model.init(jax.random.key(1), x)["params"]
    q = quantize(frozen, "nf4", block_size=8)
    assert set(quantized_paths(q)) == {"query/kernel", "out/kernel", "plain/kernel"}
    deq = dequantize(q)
    # Not adapted: inside the context, a stock Linen layer runs its einsum on the dequantized kernel.
    with jaxlora.intercept():
        np.testing.assert_allclose(model.apply({"params": q}, x), model.apply({"params": deq}, x), rtol=1e-6)
    cfg = jaxlora.AdapterConfig("lora", rank=2, targets=("query", "out"))
    adapter = perturbed(jaxlora.init(jax.random.key(2), q, cfg))

    @jax.jit
    def factored(frozen):
        with jaxlora.intercept():
            return model.apply({"params": jaxlora.apply(frozen, adapter, cfg)}, x)

    np.testing.assert_array_equal(factored(q), factored(deq))
    np.testing.assert_allclose(factored(q), model.apply({"params": jaxlora.merge(deq, adapter, cfg)}, x), atol=1e-5)


_MESH_CHILD = """
import sys; sys.path.insert(0, {repo!r})
import jax, jax.numpy as jnp, numpy as np
from jaxlora import models
from jaxlora.nn.quantize import dequantize, quantize
from jaxlora.training import sharding as sh

module, frozen = models.from_config(models.tiny_config("bert", intermediate_size=64), task="base")
q = quantize(frozen, "nf4", block_size=16)
mesh = sh.make_mesh(data=1, fsdp=2, tensor=2)
shardings = sh.frozen_shardings(module, q, mesh)
placed = sh.put_tree(q, shardings)
node = placed["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
plain = sh.frozen_shardings(module, frozen, mesh)["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
assert node.codes.sharding.spec == node.scales.sharding.spec == plain.spec, (node.codes.sharding, plain)
# Each shard dequantizes on its own: the kernel comes out split like the plain kernel, and exact.
kernel = jax.jit(dequantize)(node)
assert kernel.sharding.spec == plain.spec, kernel.sharding
np.testing.assert_array_equal(kernel, dequantize(q)["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"])
print("OK", node.codes.sharding.spec)
"""


def test_nnx_layers_read_quantized_kernels_with_and_without_an_adapter():
    from flax import nnx

    class Proj(nnx.Module):
        def __init__(self, rngs):
            self.proj = nnx.Linear(16, 32, rngs=rngs)

        def __call__(self, x):
            return self.proj(x)

    graphdef, frozen = jaxlora.nnx.split(Proj(nnx.Rngs(0)))
    q, x = quantize(frozen, "nf4", block_size=16), jnp.ones((2, 16))
    np.testing.assert_allclose(jaxlora.nnx.merge(graphdef, q)(x), jaxlora.nnx.merge(graphdef, dequantize(q))(x),
                               rtol=1e-6)
    cfg = jaxlora.AdapterConfig("lora", rank=2, targets="all-linear", exclude=())
    adapter = perturbed(jaxlora.init(jax.random.key(1), q, cfg))
    with jaxlora.intercept():
        on_q = jaxlora.nnx.merge(graphdef, jaxlora.apply(q, adapter, cfg))(x)
        on_deq = jaxlora.nnx.merge(graphdef, jaxlora.apply(dequantize(q), adapter, cfg))(x)
    np.testing.assert_array_equal(on_q, on_deq)


def test_quantized_kernels_split_over_a_mesh_like_the_kernel():
    repo = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _MESH_CHILD.format(repo=str(repo))], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK P('fsdp', 'tensor')" in proc.stdout


def test_clear_errors():
    w = jnp.ones((4, 48))
    with pytest.raises(ValueError, match=r"Unknown quantisation kind 'fp4'; the kinds are int8, nf4"):
        quantize(w, "fp4")
    with pytest.raises(ValueError, match=r"block_size=32 does not divide its last axis \(48\)"):
        quantize(w, "int8", block_size=32)
    with pytest.raises(ValueError, match=r"mlp/kernel \(4, 48\): block_size=64 does not divide"):
        quantize({"mlp": {"kernel": w}}, "nf4")
    with pytest.raises(ValueError, match=r"it has 1 axis .*Only linear kernels are quantized"):
        quantize(jnp.ones(64), "nf4")
    with pytest.raises(ValueError, match=r"dtype int32 is not floating point"):
        quantize(jnp.ones((2, 64), jnp.int32), "int8")
    with pytest.raises(ValueError, match=r"no linear kernel to quantize"):
        quantize({"embeddings": {"embedding": jnp.ones((10, 64))}}, "nf4")
    with pytest.raises(ValueError, match=r"block_size must be a positive whole number"):
        quantize(w, "nf4", block_size=0)
    q = quantize({"mlp": {"kernel": jnp.ones((4, 64))}}, "nf4")
    with pytest.raises(ValueError, match=r"mlp/kernel is already a QuantizedKernel"):
        quantize(q, "nf4")
    cfg = jaxlora.AdapterConfig("lora", rank=2, targets=("mlp",))
    with pytest.raises(ValueError, match=r"already a LoRAKernel: quantize the plain frozen params once, before jaxlora.apply"):
        quantize(jaxlora.apply(q, jaxlora.init(jax.random.key(0), q, cfg), cfg), "nf4")


def test_training_config_names_a_bad_frozen_quant():
    from jaxlora.errors import ConfigError
    from jaxlora.training import config as config_lib

    config = config_lib.default_config()
    config.frozen_quant = "nf3"
    with pytest.raises(ConfigError, match=r"config.frozen_quant='nf3' is not a quantisation kind: use 'int8' or 'nf4'"):
        config_lib.validate(config)
    config.frozen_quant = "nf4"
    config.lora.variant = "full"
    with pytest.raises(ConfigError, match=r"config.lora.variant='full' trains every weight"):
        config_lib.validate(config)


def test_train_py_runs_on_nf4_frozen_weights_and_exports_the_unquantized_format(tmp_path):
    from tests.training.conftest import write_sst2
    from tests.training.test_train_cli import run_train, tiny_flags
    from transformers import BertTokenizerFast

    from jaxlora import interop, models

    folder = tmp_path / "bert"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "the", "was", "great", "dull"]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True).save_pretrained(folder)
    module, params = models.from_config(models.tiny_config("bert", intermediate_size=64), task="base", seed=0)
    models.save_pretrained(module, params, str(folder))
    glue = write_sst2(tmp_path / "glue", n_train=32, n_dev=16)
    repo = pathlib.Path(__file__).resolve().parents[2]
    args = ["--config", str(repo / "configs" / "lora_sst2.py"), *tiny_flags(folder, glue, tmp_path / "cache"),
            "--config.frozen_quant=nf4", "--config.frozen_quant_block_size=32", "--workdir", str(tmp_path / "run")]
    proc = run_train(args, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Frozen kernels stored as nf4 in blocks of 32: 13 kernels" in proc.stdout + proc.stderr
    exported = tmp_path / "run" / "peft_adapter"
    # The trained adapter exported again from the unquantized model: the same files, config and tensors.
    from safetensors.numpy import load_file

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initialised .* weights not in the checkpoint")  # the fresh head
        task_module, frozen = models.from_pretrained(str(folder), task="sequence_classification", num_labels=2)
    adapter, adapter_cfg = interop.load_peft(str(exported), task_module, frozen)
    peft_config, tensors = interop.peft_state_dict(task_module, frozen, adapter, adapter_cfg)
    written = json.loads((exported / "adapter_config.json").read_text())
    assert {k: written[k] for k in peft_config if k != "base_model_name_or_path"} == \
        {k: v for k, v in peft_config.items() if k != "base_model_name_or_path"}
    on_disk = load_file(str(exported / "adapter_model.safetensors"))
    assert sorted(on_disk) == sorted(tensors)
    for key, value in tensors.items():
        np.testing.assert_array_equal(on_disk[key], value)
    assert (tmp_path / "run" / "adapter").is_dir()
