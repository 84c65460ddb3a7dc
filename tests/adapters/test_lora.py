"""LoRA: init, parameter count, and the forward it computes."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxlora
from jaxlora.nn import Dense
from tests.adapters.roberta_shapes import roberta_base_like


def test_init_and_count_on_roberta_base_shapes():
    frozen = roberta_base_like()
    cfg = jaxlora.AdapterConfig("lora", rank=8, alpha=16, targets=("query", "value"))
    adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    assert jaxlora.count_params(adapter).lowrank == 294_912  # 24 matrices x 8 x (768 + 768)
    q = adapter.trainable["lowrank"]["roberta"]["encoder"]["layer_3"]["attention"]["query"]
    assert q["a"].shape == (768, 8) and q["b"].shape == (8, 768)
    assert float(jnp.abs(q["a"]).max()) <= 1 / np.sqrt(768) and float(jnp.abs(q["a"]).std()) > 0.01
    assert not jnp.any(q["b"])
    # Every matrix draws its own a.
    q0 = adapter.trainable["lowrank"]["roberta"]["encoder"]["layer_0"]["attention"]["query"]["a"]
    assert not jnp.allclose(q0, q["a"])


def test_factored_forward_is_the_lora_formula():
    k = jax.random.normal(jax.random.key(0), (6, 5))
    frozen = {"proj": {"kernel": k}}
    cfg = jaxlora.AdapterConfig("lora", rank=2, alpha=6.0, targets=("proj",))
    adapter = jaxlora.init(jax.random.key(1), frozen, cfg)
    a = adapter.trainable["lowrank"]["proj"]["a"]
    b = jax.random.normal(jax.random.key(2), (2, 5))
    adapter.trainable["lowrank"]["proj"]["b"] = b
    node = jaxlora.apply(frozen, adapter, cfg)["proj"]["kernel"]
    x = jax.random.normal(jax.random.key(3), (4, 6))
    y = Dense(5, use_bias=False).apply({"params": {"kernel": node}}, x)
    np.testing.assert_allclose(y, x @ k + 3.0 * (x @ a) @ b, rtol=1e-6)
