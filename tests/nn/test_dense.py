"""jaxlora.nn.Dense: a plain Dense on arrays, the factored formula on adapter nodes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxlora
from jaxlora.nn import Dense


def _setup(dropout=0.0):
    x = jax.random.normal(jax.random.key(0), (64, 12))
    layer = Dense(10, name="proj")
    frozen = nn.unbox(layer.init(jax.random.key(1), x)["params"])
    cfg = jaxlora.AdapterConfig("lora", rank=3, alpha=3, targets=("re:.*",), dropout=dropout, exclude=())
    adapter = jaxlora.init(jax.random.key(2), {"proj": frozen}, cfg)
    adapter.trainable["lowrank"]["proj"]["b"] = jax.random.normal(jax.random.key(3), (3, 10))
    params = jaxlora.apply({"proj": frozen}, adapter, cfg)["proj"]
    return layer, x, frozen, params


def test_plain_kernel_matches_flax_dense_and_has_logical_axes():
    x = jax.random.normal(jax.random.key(0), (4, 6))
    ours = Dense(5, kernel_axes=("embed", "mlp"))
    boxed = ours.init(jax.random.key(1), x)
    assert nn.get_partition_spec(boxed)["params"]["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")
    params = nn.unbox(boxed)["params"]
    reference = nn.Dense(5).apply({"params": params}, x)
    np.testing.assert_allclose(ours.apply({"params": params}, x), reference, rtol=1e-6)


def test_node_computes_frozen_path_plus_scaled_low_rank():
    layer, x, frozen, params = _setup()
    node = params["kernel"]
    expected = x @ frozen["kernel"] + frozen["bias"] + node.scale * (x @ node.a) @ node.b
    np.testing.assert_allclose(layer.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-6)


def test_dropout_only_on_the_low_rank_input():
    layer, x, frozen, params = _setup(dropout=0.5)
    node = params["kernel"]
    eval_out = layer.apply({"params": params}, x, deterministic=True)
    np.testing.assert_allclose(eval_out, x @ frozen["kernel"] + frozen["bias"] + node.scale * (x @ node.a) @ node.b, rtol=1e-5, atol=1e-6)
    train_out = layer.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(9)})
    frozen_part = x @ frozen["kernel"] + frozen["bias"]
    low = (train_out - frozen_part) / node.scale
    # The low-rank input was masked: low == (mask * x / keep) @ a @ b for a 0/2 mask.
    solved = np.linalg.lstsq(np.asarray(node.a @ node.b).T, np.asarray(low).T, rcond=None)[0].T
    assert not np.allclose(train_out, eval_out)
    assert np.isclose(np.mean(np.isclose(solved @ np.asarray(node.a @ node.b), low, atol=1e-4)), 1.0)
    # The frozen path is never dropped: with b = 0 training equals eval exactly.
    zero = params["kernel"].replace(b=jnp.zeros_like(node.b))
    out = layer.apply({"params": {**params, "kernel": zero}}, x, deterministic=False, rngs={"dropout": jax.random.key(9)})
    np.testing.assert_allclose(out, frozen_part, rtol=1e-6)
