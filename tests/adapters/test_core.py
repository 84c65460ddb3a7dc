"""The adapter contract, checked for every variant against its math."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxlora
from tests.adapters.helpers import ALL_VARIANTS, VARIANT_IDS, config, perturbed, rel_err, tiny_model

pytestmark = pytest.mark.parametrize("variant,kw", ALL_VARIANTS, ids=VARIANT_IDS)


def test_zero_init_equals_frozen_model(variant, kw):
    model, frozen, x = tiny_model()
    cfg = config(variant, **kw)
    adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    expected = model.apply({"params": frozen}, x)
    for mode in jaxlora.adapters.MODES:
        got = model.apply({"params": jaxlora.apply(frozen, adapter, cfg, mode=mode)}, x)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_factored_equals_merged_and_factors_reproduce_delta(variant, kw):
    model, frozen, x = tiny_model()
    cfg = config(variant, **kw)
    adapter = perturbed(jaxlora.init(jax.random.key(0), frozen, cfg))
    factored = model.apply({"params": jaxlora.apply(frozen, adapter, cfg, mode="factored")}, x)
    merged = model.apply({"params": jaxlora.merge(frozen, adapter, cfg)}, x)
    assert rel_err(factored, merged) <= 1e-6
    assert rel_err(merged, model.apply({"params": frozen}, x)) > 1e-3  # the adapter does something

    merged_params = jaxlora.merge(frozen, adapter, cfg)
    factors = jaxlora.to_lora_factors(frozen, adapter, cfg)
    assert sorted(factors) == sorted(jaxlora.adapters.find_targets(frozen, cfg))
    for path, f in factors.items():
        kernel = frozen
        merged_kernel = merged_params
        for name in path:
            kernel, merged_kernel = kernel[name], merged_kernel[name]
        assert f.a.shape == (kernel["kernel"].shape[0], cfg.rank)
        assert f.b.shape == (cfg.rank, kernel["kernel"].shape[1])
        np.testing.assert_allclose(
            kernel["kernel"] + f.scale * f.a @ f.b, merged_kernel["kernel"], rtol=1e-6, atol=1e-6
        )


def test_gradients_only_for_trainable_leaves_and_fixed_factors_stay(variant, kw):
    model, frozen, x = tiny_model()
    cfg = config(variant, trainable=("classifier",), **kw)
    adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    labels = jnp.array([0, 1, 2, 1, 0])

    def loss_fn(trainable):
        params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), cfg)
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    opt = optax.adam(1e-2)
    trainable, state = adapter.trainable, opt.init(adapter.trainable)
    step = jax.jit(lambda t, s: _update(opt, loss_fn, t, s))
    for _ in range(3):
        trainable, state, grads = step(trainable, state)
    # Gradients have exactly the trainable structure: nothing frozen is differentiated.
    assert jax.tree.structure(grads) == jax.tree.structure(adapter.trainable)
    assert set(grads) == {"lowrank", "full"} and set(grads["full"]) == {"classifier"}
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["lowrank"]))
    # Optimizer state covers trainable leaves only.
    n_state = sum(np.size(l) for l in jax.tree.leaves(state))
    assert n_state <= 2 * jaxlora.count_params(adapter).trainable + 8
    # The fixed random factor is untouched and orthonormal.
    for leaf in jax.tree.leaves(adapter.fixed):
        m = leaf if leaf.shape[0] >= leaf.shape[1] else leaf.T
        np.testing.assert_allclose(m.T @ m, np.eye(m.shape[1]), atol=1e-5)
    # ... and the trained adapter computes with that very factor.
    new_adapter = adapter._replace(trainable=trainable)
    for path, f in jaxlora.to_lora_factors(frozen, new_adapter, cfg).items():
        fixed = adapter.fixed
        for name in path:
            fixed = fixed.get(name, {})
        for name, leaf in fixed.items():
            np.testing.assert_array_equal(np.asarray(getattr(f, name)), np.asarray(leaf))


def _update(opt, loss_fn, trainable, state):
    grads = jax.grad(loss_fn)(trainable)
    updates, state = opt.update(grads, state, trainable)
    return optax.apply_updates(trainable, updates), state, grads


def test_merge_unmerge_round_trip(variant, kw):
    _, frozen, _ = tiny_model()
    cfg = config(variant, **kw)
    adapter = perturbed(jaxlora.init(jax.random.key(0), frozen, cfg), scale=0.05)
    restored = jaxlora.unmerge(jaxlora.merge(frozen, adapter, cfg), adapter, cfg)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(frozen)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bf16_frozen_with_fp32_adapter(variant, kw):
    model, frozen, x = tiny_model()
    cfg = config(variant, **kw)
    frozen16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), frozen)
    adapter = perturbed(jaxlora.init(jax.random.key(0), frozen16, cfg))
    assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(adapter))
    factored = model.apply({"params": jaxlora.apply(frozen16, adapter, cfg)}, x.astype(jnp.bfloat16))
    merged = model.apply({"params": jaxlora.merge(frozen16, adapter, cfg)}, x.astype(jnp.bfloat16))
    assert factored.dtype == jnp.bfloat16
    assert rel_err(factored.astype(jnp.float32), merged.astype(jnp.float32)) < 3e-2


def test_merged_mode_runs_a_third_party_model(variant, kw):
    """A model written with flax.linen.Dense, knowing nothing of jaxlora."""

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(12, name="query")(x))
            x = nn.relu(nn.Dense(12, name="value")(x))
            return nn.Dense(2, name="head")(x)

    model = Plain()
    x = jax.random.normal(jax.random.key(3), (4, 12))
    frozen = model.init(jax.random.key(0), x)["params"]
    cfg = config(variant, **kw)
    adapter = perturbed(jaxlora.init(jax.random.key(1), frozen, cfg))
    out = model.apply({"params": jaxlora.merge(frozen, adapter, cfg)}, x)

    # The same function written by hand over the merged kernels.
    def by_hand(params):
        h = nn.relu(x @ params["query"]["kernel"] + params["query"]["bias"])
        h = nn.relu(h @ params["value"]["kernel"] + params["value"]["bias"])
        return h @ params["head"]["kernel"] + params["head"]["bias"]

    factors = jaxlora.to_lora_factors(frozen, adapter, cfg)
    manual = jax.tree.map(lambda a: a, dict(frozen))
    manual = {k: dict(v) for k, v in manual.items()}
    for (name,), f in factors.items():
        manual[name]["kernel"] = frozen[name]["kernel"] + f.scale * f.a @ f.b
    assert rel_err(out, by_hand(manual)) <= 1e-6
    assert rel_err(out, model.apply({"params": frozen}, x)) > 1e-3


def test_adapter_that_does_not_fit_the_frozen_params(variant, kw):
    _, frozen, x = tiny_model(width=16)
    _, other, _ = tiny_model(width=8)
    cfg = config(variant, **kw)
    adapter = jaxlora.init(jax.random.key(0), other, cfg)
    with pytest.raises(ValueError, match=r"do not fit these frozen params(.|\n)*wrong shape"):
        jaxlora.apply(frozen, adapter, cfg)
    _, deeper, _ = tiny_model(width=16, layers=3)
    shallow_adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    if variant == "condlora":  # shared per-module-type maps do not depend on depth
        assert jax.tree.structure(jaxlora.apply(deeper, shallow_adapter, cfg)) is not None
        return
    with pytest.raises(ValueError, match=r"do not fit(.|\n)*missing"):
        jaxlora.apply(deeper, shallow_adapter, cfg)
