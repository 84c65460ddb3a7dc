"""Subspace similarity phi: identity, random baseline r/d, invariance within the subspace."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from jaxlora import theory


def test_identical_and_nested_subspaces_score_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8))
    assert theory.subspace_similarity(x, x, 8, 8) == pytest.approx(1.0)
    assert theory.subspace_similarity(x, x, 3, 8) == pytest.approx(1.0)  # top-3 lies inside the top-8
    assert theory.subspace_similarity(x, -2.5 * x) == pytest.approx(1.0)


def test_independent_random_subspaces_score_about_r_over_d():
    rng = np.random.default_rng(1)
    d, r = 256, 8
    values = [theory.subspace_similarity(rng.normal(size=(d, r)), rng.normal(size=(d, r)), r, r) for _ in range(40)]
    assert np.mean(values) == pytest.approx(r / d, rel=0.15)
    assert max(values) < 4 * r / d


def test_invariant_to_rotations_within_the_subspace():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    rotation = ortho_group.rvs(5, random_state=3)
    base = theory.subspace_similarity(x, y)
    assert theory.subspace_similarity(x @ rotation, y) == pytest.approx(base, abs=1e-12)
    assert theory.subspace_similarity(x, y @ rotation.T) == pytest.approx(base, abs=1e-12)
    # A different basis of the same span (any invertible mix of columns) gives the same full-rank phi.
    mixed = x @ rng.normal(size=(5, 5))
    assert theory.subspace_similarity(mixed, y) == pytest.approx(base, abs=1e-10)


def test_orthogonal_subspaces_score_zero_and_matrix_is_symmetric():
    eye = np.eye(6)
    assert theory.subspace_similarity(eye[:, :3], eye[:, 3:]) == pytest.approx(0.0)
    rng = np.random.default_rng(4)
    mats = [rng.normal(size=(10, 3)) for _ in range(4)]
    s = theory.similarity_matrix(mats, i=3, j=3)
    np.testing.assert_allclose(s, s.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(s), 1.0)
    assert s[0, 1] == pytest.approx(theory.subspace_similarity(mats[0], mats[1], 3, 3))


def test_bad_arguments_raise_clear_errors():
    x = np.ones((6, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        theory.subspace_similarity(x, np.ones((5, 3)))
    with pytest.raises(ValueError, match="exceeds the 3 singular directions"):
        theory.subspace_similarity(x, x, 4, 2)
    with pytest.raises(ValueError, match="positive integer"):
        theory.subspace_similarity(x, x, 0, 2)
