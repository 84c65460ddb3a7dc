"""The linear construction: exact error sigma_{RL+1}(E), exactness once RL >= D, ranks <= R."""

import numpy as np
import pytest

from jaxlora import theory


def _problem(dim, depth, seed):
    rng = np.random.default_rng(seed)
    # Shifted Gaussians keep the frozen layers well conditioned, so float64 round-off stays ~1e-13.
    frozen = [np.eye(dim) + rng.normal(size=(dim, dim)) / np.sqrt(dim) for _ in range(depth)]
    return frozen, rng.normal(size=(dim, dim))


def _numerical_rank(matrix, rtol=1e-9):
    s = np.linalg.svd(matrix, compute_uv=False)
    return int(np.sum(s > rtol * max(s[0], 1e-300)))


@pytest.mark.parametrize("dim,depth,rank", [(6, 2, 1), (8, 2, 3), (8, 3, 2), (16, 2, 5), (16, 4, 3), (12, 5, 1)])
def test_error_equals_predicted_singular_value(dim, depth, rank):
    frozen, target = _problem(dim, depth, seed=dim * 100 + depth * 10 + rank)
    deltas = theory.linear_construction(frozen, target, rank)
    adapted = theory.chain_product([w + d for w, d in zip(frozen, deltas)])
    error = np.linalg.norm(adapted - target, 2)
    singular_values = np.linalg.svd(target - theory.chain_product(frozen), compute_uv=False)
    assert rank * depth < dim
    assert error == pytest.approx(singular_values[rank * depth], abs=1e-8)
    assert theory.linear_construction_error(frozen, target, rank) == pytest.approx(error, abs=1e-8)
    assert all(_numerical_rank(d) <= rank for d in deltas)


@pytest.mark.parametrize("dim,depth,rank", [(6, 2, 3), (8, 2, 4), (8, 3, 3), (16, 2, 8), (16, 4, 4), (16, 2, 16)])
def test_exact_once_rank_times_depth_reaches_width(dim, depth, rank):
    frozen, target = _problem(dim, depth, seed=7 * dim + rank)
    details = theory.linear_construction_details(frozen, target, rank)
    adapted = theory.chain_product([w + d for w, d in zip(frozen, details.deltas)])
    assert details.predicted_error == 0.0
    assert np.linalg.norm(adapted - target, 2) <= 1e-8
    assert all(_numerical_rank(d) <= rank for d in details.deltas)


def test_adapted_product_is_frozen_plus_best_lowrank_error():
    frozen, target = _problem(10, 3, seed=3)
    deltas = theory.linear_construction(frozen, target, 2)
    product = theory.chain_product(frozen)
    expected = product + theory.lowrank_approximation(target - product, 6)
    np.testing.assert_allclose(theory.chain_product([w + d for w, d in zip(frozen, deltas)]), expected, atol=1e-10)


def test_rank_zero_changes_nothing():
    frozen, target = _problem(5, 2, seed=1)
    assert all(np.all(d == 0) for d in theory.linear_construction(frozen, target, 0))


def test_bad_inputs_raise_clear_errors():
    frozen, target = _problem(4, 2, seed=0)
    with pytest.raises(ValueError, match="list"):
        theory.linear_construction(frozen[0], target, 1)
    with pytest.raises(ValueError, match="D x D"):
        theory.linear_construction([frozen[0], np.ones((4, 3))], target, 1)
    with pytest.raises(ValueError, match="square"):
        theory.linear_construction(frozen, np.ones((4, 3)), 1)
    with pytest.raises(ValueError, match="non-negative integer"):
        theory.linear_construction(frozen, target, -1)
    with pytest.raises(ValueError, match="empty"):
        theory.linear_construction([], target, 1)
