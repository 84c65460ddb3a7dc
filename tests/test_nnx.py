"""jaxlora.nnx: NNX models as plain param dicts and back, with adapters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlora


class Net(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(2)])
        self.proj = nnx.LinearGeneral((2, 4), 8, axis=(-2, -1), use_bias=False, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.proj(x.reshape(*x.shape[:-1], 2, 4))


def test_split_gives_plain_params_with_integer_keys_and_merge_restores_the_model():
    model = Net(nnx.Rngs(0))
    x = jnp.ones((3, 8))
    graphdef, frozen = jaxlora.nnx.split(model)
    assert sorted(frozen) == ["layers", "proj"] and sorted(frozen["layers"]) == [0, 1]
    assert isinstance(frozen["layers"][0]["kernel"], jax.Array)  # plain arrays, no Variables
    np.testing.assert_allclose(jaxlora.nnx.merge(graphdef, frozen)(x), model(x), rtol=1e-6)
    with pytest.raises(TypeError, match="graphdef returned by jaxlora.nnx.split"):
        jaxlora.nnx.merge(nnx.split(model)[0], frozen)


def test_bias_free_multi_axis_layer_gets_its_axes_from_the_model():
    model = Net(nnx.Rngs(0))
    graphdef, frozen = jaxlora.nnx.split(model)
    with pytest.raises(ValueError, match=r"Module proj has a kernel of shape \(2, 4, 8\)"):
        jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig(rank=2, targets="all-linear"))
    assert jaxlora.nnx.kernel_axes(model) == {"proj": 2}
    cfg = jaxlora.AdapterConfig(rank=2, targets="all-linear", kernel_axes=jaxlora.nnx.kernel_axes(model))
    adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    adapter = adapter._replace(trainable=jax.tree.map(lambda t: t + 0.1, adapter.trainable))
    x = jax.random.normal(jax.random.key(1), (3, 8))

    @jax.jit
    def forward(frozen, trainable):  # frozen is an argument: closed over, it would become constants
        params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), cfg)
        with jaxlora.intercept():
            return jaxlora.nnx.merge(graphdef, params)(x)

    merged = jaxlora.nnx.merge(graphdef, jaxlora.merge(frozen, adapter, cfg))(x)
    np.testing.assert_allclose(forward(frozen, adapter.trainable), merged, rtol=1e-5, atol=1e-6)
