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
