"""MTLoRA: the four structures of T, both inits, and T = I as plain LoRA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlora
from jaxlora.nn import Dense
from jaxlora.adapters.mtlora import transform
from tests.adapters.helpers import perturbed, tiny_model


@pytest.mark.parametrize("structure,expected,extra", [
    ("shim", lambda c, d: c, 16),
    ("icfm", lambda c, d: c @ c.T, 16),
    ("ctcm", lambda c, d: c @ d, 32),
    ("dtsm", lambda c, d: c + d, 32),
])
def test_each_structures_transform(structure, expected, extra):
    k = jax.random.normal(jax.random.key(0), (8, 6))
    frozen = {"query": {"kernel": k}}
    cfg = jaxlora.AdapterConfig("mtlora", rank=4, alpha=8, targets=("query",), options={"structure": structure})
    adapter = perturbed(jaxlora.init(jax.random.key(1), frozen, cfg))
    p = adapter.trainable["lowrank"]["query"]
    c, d = p["c"], p.get("d")
    assert jaxlora.count_params(adapter).lowrank == 4 * (8 + 6) + extra
    (f,) = jaxlora.to_lora_factors(frozen, adapter, cfg).values()
    t_pt = expected(c, d)  # PyTorch-layout T: dW = B T A
    big_a, big_b = p["a"].T, p["b"].T
    np.testing.assert_allclose((f.a @ f.b).T, big_b @ t_pt @ big_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(transform(structure, c, d), t_pt, rtol=1e-6)
    x = jax.random.normal(jax.random.key(2), (3, 8))
    node = jaxlora.apply(frozen, adapter, cfg)["query"]["kernel"]
    y = Dense(6, use_bias=False).apply({"params": {"kernel": node}}, x)
    np.testing.assert_allclose(y, x @ k + 2.0 * x @ p["a"] @ t_pt.T @ p["b"], rtol=1e-5, atol=1e-5)


def test_kaiming_init_follows_the_official_code():
    frozen = {"query": {"kernel": jnp.zeros((64, 32))}}
    adapter = jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig("mtlora", rank=8, targets=("query",), options={"structure": "dtsm"}))
    p = adapter.trainable["lowrank"]["query"]
    assert float(jnp.abs(p["a"]).max()) <= 1 / np.sqrt(64)
    assert float(jnp.abs(p["c"]).max()) <= 1 / np.sqrt(8) and float(jnp.abs(p["d"]).max()) <= 1 / np.sqrt(8)
    assert not jnp.any(p["b"])


@pytest.mark.parametrize("structure", ["shim", "icfm", "ctcm", "dtsm"])
def test_identity_init_reduces_exactly_to_lora(structure):
    model, frozen, x = tiny_model()
    cfg = jaxlora.AdapterConfig("mtlora", rank=4, targets=("query", "value"), options={"structure": structure, "init": "identity"})
    mt = jaxlora.init(jax.random.key(0), frozen, cfg)
    for leaves in jax.tree.leaves(mt.trainable["lowrank"], is_leaf=lambda n: isinstance(n, dict) and "c" in n):
        t = transform(structure, leaves["c"], leaves.get("d"))
        np.testing.assert_array_equal(t, np.eye(4))
        leaves["b"] = jax.random.normal(jax.random.key(1), leaves["b"].shape)
    lora_cfg = jaxlora.AdapterConfig("lora", rank=4, targets=("query", "value"))
    lora = jax.tree.map(lambda n: n, jaxlora.init(jax.random.key(0), frozen, lora_cfg))
    lora_tree = jax.tree.map(lambda n: {"a": n["a"], "b": n["b"]}, mt.trainable["lowrank"],
                             is_leaf=lambda n: isinstance(n, dict) and "c" in n)
    lora = lora._replace(trainable={"lowrank": lora_tree, "full": {}})
    out_mt = model.apply({"params": jaxlora.apply(frozen, mt, cfg)}, x)
    out_lora = model.apply({"params": jaxlora.apply(frozen, lora, lora_cfg)}, x)
    np.testing.assert_allclose(out_mt, out_lora, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(out_lora - model.apply({"params": frozen}, x)).max()) > 1e-3


def test_unknown_structure_init_and_option_names():
    with pytest.raises(ValueError, match=r"Unknown MTLoRA structure 'tshm'; choose one of"):
        jaxlora.AdapterConfig("mtlora", rank=2, targets=("query",), options={"structure": "tshm"})
    with pytest.raises(ValueError, match=r"Unknown MTLoRA init 'xavier'; choose one of \('kaiming', 'identity'\)"):
        jaxlora.AdapterConfig("mtlora", options={"init": "xavier"})
    with pytest.raises(ValueError, match=r"Unknown option 'mtlora_init' of adapter variant 'mtlora'; its options are "
                                         r"structure \(default 'shim'\), init \(default 'kaiming'\)"):
        jaxlora.AdapterConfig("mtlora", options={"mtlora_init": "identity"})
