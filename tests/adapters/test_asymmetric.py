"""B-only and A-only: which factor trains, orthonormality, counts."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxlora
from tests.adapters.roberta_shapes import roberta_base_like


def _q(tree, layer=0):
    return tree["roberta"]["encoder"][f"layer_{layer}"]["attention"]["query"]


def test_bonly_frozen_orthonormal_a_trained_zero_b():
    frozen = roberta_base_like(layers=2)
    adapter = jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig("bonly", rank=16))
    a, b = _q(adapter.fixed)["a"], _q(adapter.trainable["lowrank"])["b"]
    assert set(_q(adapter.trainable["lowrank"])) == {"b"} and set(_q(adapter.fixed)) == {"a"}
    np.testing.assert_allclose(a.T @ a, np.eye(16), atol=1e-5)
    assert b.shape == (16, 768) and not jnp.any(b)
    assert not jnp.allclose(a, _q(adapter.fixed, 1)["a"])  # each matrix draws its own


def test_aonly_frozen_orthonormal_rows_b():
    frozen = roberta_base_like(layers=1)
    adapter = jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig("aonly", rank=8))
    b, a = _q(adapter.fixed)["b"], _q(adapter.trainable["lowrank"])["a"]
    np.testing.assert_allclose(b @ b.T, np.eye(8), atol=1e-5)
    assert a.shape == (768, 8) and not jnp.any(a)


def test_bonly_at_rank_2r_costs_what_lora_costs_at_r():
    frozen = roberta_base_like()
    count = lambda v, r: jaxlora.count_params(jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig(v, rank=r))).lowrank
    assert count("bonly", 8) == 24 * 8 * 768 == count("lora", 8) // 2
    assert count("bonly", 16) == count("lora", 8)
    assert count("aonly", 8) == count("bonly", 8)


def test_frozen_factor_is_reproducible_from_the_key():
    frozen = roberta_base_like(layers=1)
    cfg = jaxlora.AdapterConfig("bonly", rank=4)
    a1 = jaxlora.init(jax.random.key(5), frozen, cfg).fixed
    a2 = jaxlora.init(jax.random.key(5), frozen, cfg).fixed
    jax.tree.map(np.testing.assert_array_equal, a1, a2)
