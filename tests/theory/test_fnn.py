"""The ReLU FNN construction: exact on active inputs at the rank threshold, error decreasing below it."""

import numpy as np
import pytest

from jaxlora import theory


def _setup(width, frozen_depth, target_depth, seed):
    rng = np.random.default_rng(seed)
    frozen = theory.random_fnn(rng, width, frozen_depth)
    target = theory.random_fnn(rng, width, target_depth)
    return frozen, target, rng.normal(size=(1000, width)), rng.normal(size=(2000, width))


@pytest.mark.parametrize("width,frozen_depth,target_depth", [(16, 2, 1), (16, 4, 2), (8, 5, 2), (6, 3, 3)])
def test_exact_at_threshold_on_active_inputs(width, frozen_depth, target_depth):
    frozen, target, calibration, test = _setup(width, frozen_depth, target_depth, seed=width + frozen_depth)
    threshold = theory.fnn_rank_threshold(frozen, target)
    # M = floor(L / L_bar) layers per group; the last group may be longer.
    assert threshold == int(np.ceil(width / (frozen_depth // target_depth)))
    for rank in (threshold, width):
        result = theory.fnn_construction(frozen, target, rank, calibration)
        active = theory.fnn_relus_active(result, test)
        assert active.mean() > 0.99  # the calibrated biases keep the grouped ReLUs on
        gap = theory.fnn_forward(result.layers, test[active]) - theory.fnn_forward(target, test[active])
        assert np.max(np.abs(gap)) <= 1e-8
        assert result.group_errors == [0.0] * target_depth


def test_error_decreases_below_threshold_and_matches_prediction():
    frozen, target, calibration, test = _setup(16, 4, 2, seed=11)
    errors, predicted = [], []
    for rank in range(1, 9):
        result = theory.fnn_construction(frozen, target, rank, calibration)
        assert theory.fnn_relus_active(result, test).all()
        errors.append(np.mean((theory.fnn_forward(result.layers, test) - theory.fnn_forward(target, test)) ** 2))
        predicted.append(max(result.group_errors))
        assert result.group_errors == pytest.approx(theory.fnn_construction_errors(frozen, target, rank))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    assert all(later < earlier for earlier, later in zip(predicted, predicted[1:]))
    assert predicted[-1] == 0.0 and errors[-1] < 1e-20


def test_one_group_error_is_the_linear_error_of_the_weights():
    frozen, target, calibration, test = _setup(8, 2, 1, seed=5)
    result = theory.fnn_construction(frozen, target, 2, calibration)
    weights = [layer.weight for layer in frozen]
    assert result.group_errors[0] == pytest.approx(theory.linear_construction_error(weights, target[0].weight, 2))
    # With active ReLUs the adapted network is affine: its weight error has spectral norm sigma_5(E).
    adapted_weight = result.layers[1].weight @ result.layers[0].weight
    assert np.linalg.norm(adapted_weight - target[0].weight, 2) == pytest.approx(result.group_errors[0], abs=1e-10)


def test_deltas_have_rank_at_most_r():
    frozen, target, calibration, _ = _setup(12, 4, 2, seed=2)
    result = theory.fnn_construction(frozen, target, 3, calibration)
    for delta in result.deltas:
        s = np.linalg.svd(delta, compute_uv=False)
        assert np.sum(s > 1e-9 * s[0]) <= 3


def test_group_layout_and_errors():
    assert theory.fnn_group_layout(4, 2) == [(0, 2), (2, 4)]
    assert theory.fnn_group_layout(7, 3) == [(0, 2), (2, 4), (4, 7)]
    frozen, target, calibration, _ = _setup(4, 2, 1, seed=0)
    with pytest.raises(ValueError, match="at least as deep"):
        theory.fnn_construction(target, frozen, 1, calibration)
    with pytest.raises(ValueError, match="calibration_inputs must have shape"):
        theory.fnn_construction(frozen, target, 1, calibration[:, :3])
    with pytest.raises(ValueError, match="margin"):
        theory.fnn_construction(frozen, target, 1, calibration, margin=0.5)
