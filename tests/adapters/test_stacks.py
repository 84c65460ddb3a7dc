"""Layer stacks (jaxlora/adapters/stacks.py): adapters on stacked params behave exactly as on the per-layer tree.

Plain pytrees, no model: every registered variant, a pattern that adapts one layer only, a leaf
trained in full inside the stack, and the errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlora
from jaxlora.adapters.stacks import layer_view, stack_layers, unstack_layers

STACK = ("m/layers",)


def _per_layer(layers=3, d=6):
    rng = np.random.default_rng(0)
    return {
        "m": {
            **{f"layers_{i}": {name: {"kernel": rng.normal(size=(d, d)).astype(np.float32),
                                      "bias": rng.normal(size=(d,)).astype(np.float32)}
                               for name in ("q", "v")} for i in range(layers)},
            "head": {"kernel": rng.normal(size=(d, 2)).astype(np.float32)},
        }
    }


def _leaves_equal(a, b, rtol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=0)


def test_stack_and_unstack_are_inverse():
    per = _per_layer()
    stacked = stack_layers(per, STACK)
    assert stacked["m"]["layers"]["q"]["kernel"].shape == (3, 6, 6)
    assert sorted(stacked["m"]) == ["head", "layers"]
    _leaves_equal(unstack_layers(stacked, STACK), per)


@pytest.mark.parametrize("variant", sorted(jaxlora.registered_variants()))
def test_every_variant_inits_applies_and_merges_as_per_layer(variant):
    # "layers_1/v" adapts one layer of the stacked v: the other layers get all-zero adapter leaves.
    cfg = jaxlora.AdapterConfig(variant, rank=2, targets=("q", "layers_1/v"), trainable=("layers_2/q/bias",))
    per, stacked_cfg = _per_layer(), cfg.replace(layer_stacks=STACK)
    stacked = stack_layers(per, STACK)
    adapter = jaxlora.init(jax.random.key(0), per, cfg)
    _leaves_equal(jaxlora.init(jax.random.key(0), stacked, stacked_cfg), adapter)   # same keys, same numbers
    adapter = adapter._replace(trainable=jax.tree.map(lambda x: x + 0.01, adapter.trainable))

    merged = unstack_layers(jaxlora.merge(stacked, adapter, stacked_cfg), STACK)
    _leaves_equal(merged, jaxlora.merge(per, adapter, cfg))
    factored = jaxlora.apply(stacked, adapter, stacked_cfg)["m"]["layers"]
    assert isinstance(factored["q"]["kernel"], jaxlora.adapters.AdaptedKernel)
    assert factored["q"]["kernel"].kernel is stacked["m"]["layers"]["q"]["kernel"]   # the frozen stack, not a copy
    assert factored["q"]["bias"][2].tolist() == adapter.trainable["full"]["m"]["layers_2"]["q"]["bias"].tolist()

    assert jaxlora.to_lora_factors(stacked, adapter, stacked_cfg).keys() == jaxlora.to_lora_factors(per, adapter, cfg).keys()
    assert jaxlora.param_table(stacked, adapter, stacked_cfg) == jaxlora.param_table(per, adapter, cfg)
    unmerged = jaxlora.unmerge(jaxlora.merge(stacked, adapter, stacked_cfg), adapter, stacked_cfg)
    np.testing.assert_allclose(unmerged["m"]["layers"]["v"]["kernel"], stacked["m"]["layers"]["v"]["kernel"], atol=1e-5)


def test_gradients_reach_the_per_layer_adapter():
    per = _per_layer()
    cfg = jaxlora.AdapterConfig("condlora", rank=2, targets=("q",))
    stacked, stacked_cfg = stack_layers(per, STACK), cfg.replace(layer_stacks=STACK)
    adapter = jaxlora.init(jax.random.key(0), per, cfg)
    x = jnp.ones((4, 6))

    def loss(trainable, frozen, config, run):
        params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), config, mode="merged")
        return run(params["m"], x)

    def unrolled(layers, h):
        for i in range(3):
            h = jnp.tanh(h @ layers[f"layers_{i}"]["q"]["kernel"])
        return jnp.sum(h**2)

    def scanned(layers, h):
        h, _ = jax.lax.scan(lambda c, k: (jnp.tanh(c @ k), None), h, layers["layers"]["q"]["kernel"])
        return jnp.sum(h**2)

    adapter = adapter._replace(trainable=jax.tree.map(lambda a: a + 0.1, adapter.trainable))
    want = jax.grad(loss)(adapter.trainable, per, cfg, unrolled)
    got = jax.grad(loss)(adapter.trainable, stacked, stacked_cfg, scanned)
    _leaves_equal(got, want, rtol=1e-5)   # CondLoRA's shared maps: the layers' contributions summed


def test_differing_ranks_in_a_stack_are_refused_naming_the_layers():
    stacked = stack_layers(_per_layer(), STACK)
    cfg = jaxlora.AdapterConfig("lora", rank=2, targets=("q",), rank_pattern={"layers_2/q": 4}, layer_stacks=STACK)
    adapter = jaxlora.init(jax.random.key(0), stacked, cfg)   # per layer, any ranks
    with pytest.raises(jaxlora.UserError, match=r"rank 2, alpha 8: m/layers_0/q, m/layers_1/q; rank 4, alpha 8: m/layers_2/q"):
        jaxlora.apply(stacked, adapter, cfg)


def test_a_stack_path_with_nothing_under_it_is_an_error():
    with pytest.raises(jaxlora.UserError, match="no leaves under it"):
        layer_view({("m", "layers_0", "q", "kernel"): np.ones((2, 2))}, ("m/layers",))
    with pytest.raises(jaxlora.UserError, match="No layers named"):
        stack_layers({"m": {"q": {"kernel": np.ones((2, 2))}}}, STACK)
