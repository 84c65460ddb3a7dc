"""The optimiser pieces: the schedule, per-group rates, state for trainable leaves only, the masked loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlora import training
from jaxlora.training import optim


def test_linear_schedule_warms_up_then_decays_to_zero():
    schedule = optim.linear_schedule(1.0, total_steps=10, warmup_steps=2)
    assert [float(schedule(i)) for i in (0, 1, 2, 6, 10)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    no_warmup = optim.linear_schedule(2.0, total_steps=4, warmup_steps=0)
    assert [float(no_warmup(i)) for i in (0, 2, 4)] == pytest.approx([2.0, 1.0, 0.0])


def _trainable():
    return {"lowrank": {"q": {"a": jnp.ones((4, 2)), "b": jnp.zeros((2, 4))}},
            "full": {"classifier": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}}


def test_group_rates_scale_each_group_and_state_exists_for_trainable_leaves_only():
    params = _trainable()
    grads = jax.tree.map(jnp.ones_like, params)
    spec = training.OptimizerSpec(learning_rate=1e-3, full_learning_rate=1e-1, warmup_ratio=0.0)
    tx = training.make_optimizer(spec, total_steps=100)
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    # Adam's first step moves every leaf by its rate (sign of the gradient).
    assert float(jnp.abs(updates["lowrank"]["q"]["a"]).max()) == pytest.approx(1e-3, rel=1e-3)
    assert float(jnp.abs(updates["full"]["classifier"]["kernel"]).max()) == pytest.approx(1e-1, rel=1e-3)
    shapes = sorted(np.shape(x) for x in jax.tree.leaves(params))
    moments = [np.shape(x) for x in jax.tree.leaves(state) if np.ndim(x) > 0]
    assert sorted(moments) == sorted(shapes * 2)  # mu and nu of each trainable leaf, nothing else


def test_weight_decay_applies_to_matrices_only():
    params = _trainable()
    grads = jax.tree.map(jnp.zeros_like, params)
    tx = training.make_optimizer(training.OptimizerSpec(1.0, weight_decay=0.1, warmup_ratio=0.0), 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["full"]["classifier"]["kernel"]).max()) > 0  # matrices decay
    params["full"]["classifier"]["bias"] = jnp.ones(2)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["full"]["classifier"]["bias"]).max()) == 0.0  # vectors do not


def test_loss_ignores_dummy_rows_of_a_partial_batch():
    logits = jnp.array([[2.0, 0.0], [0.0, 3.0], [50.0, -50.0]])
    labels = jnp.array([0, 1, 1])
    full = training.loss_fn(logits[:2], labels[:2], jnp.ones(2), regression=False)
    masked = training.loss_fn(logits, labels, jnp.array([1.0, 1.0, 0.0]), regression=False)
    assert float(masked) == pytest.approx(float(full))
    scores = jnp.array([[1.0], [3.0], [100.0]])
    mse = training.loss_fn(scores, jnp.array([2.0, 3.0, 0.0]), jnp.array([1.0, 1.0, 0.0]), regression=True)
    assert float(mse) == pytest.approx(0.5)


def _per_layer_trainable(key, layers=3):
    keys = iter(jax.random.split(key, 4 * layers + 2))
    lowrank = {f"layers_{i}": {"q": {"a": jax.random.normal(next(keys), (4, 2)), "b": jax.random.normal(next(keys), (2, 4)),
                                     "gain": jax.random.normal(next(keys), (4,))}} for i in range(layers)}
    lowrank["shared"] = {"m": jax.random.normal(next(keys), (2, 2))}  # outside the stack (CondLoRA-like)
    full = {"classifier": {"kernel": jax.random.normal(next(keys), (4, 2)), "bias": jnp.zeros(2)},
            "layers": {"norm": {"scale": jnp.ones((layers, 4))}}}  # a stacked vector trained in full
    return {"lowrank": lowrank, "full": full}


def test_the_stacked_layout_gives_the_per_layer_optimisers_numbers():
    # Same adamw, decay on matrices only, clipping and two rates: per layer (make_optimizer without stacks)
    # and over the stacked layout; three steps of random gradients, compared leaf by leaf.
    spec = training.OptimizerSpec(1e-2, full_learning_rate=1e-3, weight_decay=0.1, warmup_ratio=0.0, clip_norm=0.5)
    params = _per_layer_trainable(jax.random.key(0))
    stacked_tx = optim.make_optimizer(spec, 10, layer_stacks=("layers",))
    reference = optim.make_optimizer(spec, 10)
    assert (3, 4, 2) in {x.shape for x in jax.tree.leaves(stacked_tx.init(params))}  # moments stored stacked
    results = []
    for tx in (stacked_tx, reference):
        p, state = params, tx.init(params)
        for step in range(3):
            grads = jax.tree.map(lambda x, s=step: jax.random.normal(jax.random.key(s), x.shape), p)
            updates, state = tx.update(grads, state, p)
            p = jax.tree.map(lambda x, u: x + u, p, updates)
        results.append(p)
    assert jax.tree.structure(results[0]) == jax.tree.structure(params)  # the per-layer tree comes back
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(results[0])[0], jax.tree.leaves(results[1])):
        name = jax.tree_util.keystr(path)
        if "norm" not in name:  # the stacked norm scale: the reference decays it as a matrix (below)
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=name)


def test_weight_decay_skips_vectors_stacked_over_layers():
    spec = training.OptimizerSpec(1.0, weight_decay=0.1, warmup_ratio=0.0)
    params = _per_layer_trainable(jax.random.key(1))
    tx = optim.make_optimizer(spec, 10, layer_stacks=("layers",))
    decay_only, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)  # zero gradients
    assert float(jnp.abs(decay_only["lowrank"]["layers_1"]["q"]["gain"]).max()) == 0.0  # a per-layer vector
    assert float(jnp.abs(decay_only["full"]["layers"]["norm"]["scale"]).max()) == 0.0  # (layers, 4): vectors
    assert float(jnp.abs(decay_only["lowrank"]["layers_1"]["q"]["a"]).max()) > 0.0  # matrices decay
    assert float(jnp.abs(decay_only["full"]["classifier"]["kernel"]).max()) > 0.0
