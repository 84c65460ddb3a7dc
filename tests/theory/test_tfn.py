"""The TFN construction: at rank ceil(D/2) the adapted TFN computes the target TFN."""

import math

import numpy as np
import pytest

from jaxlora import theory


def _columnwise_reference(model, x):
    """The paper's formula, one sequence at a time, tokens as columns."""
    z = x
    for block in model.blocks:
        attended = 0.0
        for h in range(block.query.shape[0]):
            scores = (block.key[h] @ z).T @ (block.query[h] @ z)
            pattern = np.exp(scores - scores.max(axis=0))
            pattern /= pattern.sum(axis=0)
            attended = attended + block.out[h] @ block.value[h] @ z @ pattern
        z = block.ffn2 @ np.maximum(block.ffn1 @ attended + block.bias1[:, None], 0.0) + block.bias2[:, None]
    return model.output @ z


def test_forward_matches_the_papers_columnwise_formula():
    rng = np.random.default_rng(0)
    model = theory.random_tfn(rng, width=6, depth=2, heads=3)
    x = rng.normal(size=(4, 6, 5))
    out = theory.tfn_forward(model, x)
    for index in range(4):
        np.testing.assert_allclose(out[index], _columnwise_reference(model, x[index]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("width,depth,heads", [(16, 1, 2), (16, 2, 2), (7, 2, 3), (8, 3, 1)])
def test_adapted_tfn_equals_target_at_half_width(width, depth, heads):
    rng = np.random.default_rng(width * 10 + depth)
    frozen = theory.random_tfn(rng, width, depth, heads)
    target = theory.random_tfn(rng, width, depth, heads)
    rank = math.ceil(width / 2)
    result = theory.tfn_construction(frozen, target, rank)
    x = rng.normal(size=(64, width, 10))
    expected = theory.tfn_forward(target, x)
    relative = np.linalg.norm(theory.tfn_forward(result.model, x) - expected) / np.linalg.norm(expected)
    assert relative <= 1e-6
    assert all(error == 0.0 for error in result.product_errors.values())
    # Every adapted matrix moves by rank <= R; FFN first weights are untouched.
    for block in result.deltas.blocks:
        for name in ("query", "key", "value", "out"):
            for delta in getattr(block, name):
                s = np.linalg.svd(delta, compute_uv=False)
                assert np.sum(s > 1e-9 * s[0]) <= rank
        assert np.all(block.ffn1 == 0)
    for matrix in (result.deltas.blocks[-1].ffn2, result.deltas.output):
        s = np.linalg.svd(matrix, compute_uv=False)
        assert np.sum(s > 1e-9 * s[0]) <= rank


def test_below_half_width_the_target_is_not_reached_and_errors_are_reported():
    rng = np.random.default_rng(3)
    frozen, target = theory.random_tfn(rng, 8, 1, 2), theory.random_tfn(rng, 8, 1, 2)
    x = rng.normal(size=(32, 8, 6))
    gaps = []
    for rank in (1, 2, 3):
        result = theory.tfn_construction(frozen, target, rank)
        assert max(result.product_errors.values()) > 0
        gaps.append(np.linalg.norm(theory.tfn_forward(result.model, x) - theory.tfn_forward(target, x)))
    assert min(gaps) > 1e-3


def test_mismatched_models_raise_clear_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same depth"):
        theory.tfn_construction(theory.random_tfn(rng, 4, 1, 2), theory.random_tfn(rng, 4, 2, 2), 2)
    with pytest.raises(ValueError, match="same width D and heads H"):
        theory.tfn_construction(theory.random_tfn(rng, 4, 1, 2), theory.random_tfn(rng, 4, 1, 3), 2)
    with pytest.raises(ValueError, match="TFN"):
        theory.tfn_construction([np.eye(4)], theory.random_tfn(rng, 4, 1, 2), 2)
