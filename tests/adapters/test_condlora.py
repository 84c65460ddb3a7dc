"""CondLoRA: shared maps, the paper's parameter count, summed gradients, square-only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlora
from tests.adapters.roberta_shapes import roberta_base_like


def test_roberta_base_counts_match_the_paper():
    frozen = roberta_base_like()
    cond = jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig("condlora", rank=8, alpha=8))
    lora = jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig("lora", rank=8, alpha=8))
    assert jaxlora.count_params(cond).lowrank == 24_576
    assert jaxlora.count_params(lora).lowrank == 294_912
    theta = cond.trainable["lowrank"]
    assert sorted(theta) == ["query", "value"]
    assert theta["query"]["theta_a"].shape == (8, 768) and not jnp.any(theta["query"]["theta_b"])


def test_factors_follow_the_official_code():
    k = jax.random.normal(jax.random.key(0), (6, 6))
    frozen = {"layer": {"query": {"kernel": k}}}
    cfg = jaxlora.AdapterConfig("condlora", rank=2, alpha=2, targets=("query",))
    adapter = jaxlora.init(jax.random.key(1), frozen, cfg)
    th_a = adapter.trainable["lowrank"]["query"]["theta_a"]
    th_b = jax.random.normal(jax.random.key(2), (2, 6))
    adapter.trainable["lowrank"]["query"]["theta_b"] = th_b
    (f,) = jaxlora.to_lora_factors(frozen, adapter, cfg).values()
    # a = M_A.T with M_A = theta_a @ K; b = M_B = theta_b @ K; PyTorch: dW = W theta_b^T theta_a W^T.
    np.testing.assert_allclose(f.a, (th_a @ k).T, rtol=1e-6)
    np.testing.assert_allclose(f.b, th_b @ k, rtol=1e-6)
    w = k.T
    np.testing.assert_allclose((f.a @ f.b).T, w @ th_b.T @ th_a @ w.T, rtol=1e-5, atol=1e-6)


def test_shared_theta_gets_the_sum_of_every_layers_gradient():
    layers, d = 4, 8
    keys = jax.random.split(jax.random.key(0), layers)
    frozen = {f"layer_{i}": {"query": {"kernel": jax.random.normal(k, (d, d)) / np.sqrt(d)}} for i, k in enumerate(keys)}
    cfg = jaxlora.AdapterConfig("condlora", rank=2, alpha=2, targets=("query",))
    adapter = jaxlora.init(jax.random.key(1), frozen, cfg)
    adapter.trainable["lowrank"]["query"]["theta_b"] = 0.1 * jax.random.normal(jax.random.key(2), (2, d))
    x = jax.random.normal(jax.random.key(3), (5, d))

    def network(kernels):
        h = x
        for kern in kernels:
            h = jnp.tanh(h @ kern)
        return jnp.sum(h**2)

    def shared_loss(theta):
        params = jaxlora.merge(frozen, adapter._replace(trainable={"lowrank": {"query": theta}, "full": {}}), cfg)
        return network([params[f"layer_{i}"]["query"]["kernel"] for i in range(layers)])

    def per_layer_loss(thetas):  # every layer its own copy of theta
        kernels = []
        for i, th in enumerate(thetas):
            k = frozen[f"layer_{i}"]["query"]["kernel"]
            kernels.append(k + 1.0 * (k.T @ th["theta_a"].T) @ (th["theta_b"] @ k))
        return network(kernels)

    theta = adapter.trainable["lowrank"]["query"]
    shared = jax.grad(shared_loss)(theta)
    per_layer = jax.grad(per_layer_loss)([theta] * layers)
    summed = jax.tree.map(lambda *g: sum(g), *per_layer)
    for name in ("theta_a", "theta_b"):
        np.testing.assert_allclose(shared[name], summed[name], rtol=1e-5, atol=1e-7)
        assert all(float(jnp.abs(g[name]).max()) > 0 for g in per_layer)


def test_non_square_needs_the_explicit_rectangular_extension():
    frozen = roberta_base_like(layers=2)
    cfg = jaxlora.AdapterConfig("condlora", rank=4, targets=("query", "intermediate"))
    with pytest.raises(ValueError, match=r"needs square weights, but the 'intermediate' modules have shape \(768, 3072\)(.|\n)*rectangular=True"):
        jaxlora.init(jax.random.key(0), frozen, cfg)
    adapter = jaxlora.init(jax.random.key(0), frozen, cfg.replace(options={"rectangular": True}))
    theta = adapter.trainable["lowrank"]
    assert theta["intermediate"]["theta_a"].shape == (4, 3072)  # phi_a: (r, d_out)
    assert theta["intermediate"]["theta_b"].shape == (4, 768)   # psi_b: (r, d_in)
    assert theta["query"]["theta_a"].shape == (4, 768)          # square keeps the paper's form
    factors = jaxlora.to_lora_factors(frozen, adapter, cfg.replace(options={"rectangular": True}))
    f = factors[("roberta", "encoder", "layer_0", "intermediate")]
    assert f.a.shape == (768, 4) and f.b.shape == (4, 3072)


def test_one_group_must_share_shape_and_rank():
    frozen = roberta_base_like(layers=1)
    cfg = jaxlora.AdapterConfig("condlora", rank=4, targets=("query",),
                                rank_pattern={"layer_0/attention/query": 2})
    frozen["roberta"]["encoder"]["layer_1"] = roberta_base_like(layers=1)["roberta"]["encoder"]["layer_0"]
    with pytest.raises(ValueError, match="differ in shape, rank or scale"):
        jaxlora.init(jax.random.key(0), frozen, cfg)


def test_each_module_types_map_is_seeded_by_its_path():
    # base.py's path_rng rule: adding a module type must not change the other types' init.
    frozen = roberta_base_like(layers=1)
    alone = jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig("condlora", rank=4, targets=("value",)))
    both = jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig("condlora", rank=4, targets=("query", "value")))
    np.testing.assert_array_equal(alone.trainable["lowrank"]["value"]["theta_a"], both.trainable["lowrank"]["value"]["theta_a"])
    assert not np.array_equal(both.trainable["lowrank"]["query"]["theta_a"], both.trainable["lowrank"]["value"]["theta_a"])
