"""Normalised subspace similarity between the column spaces of two matrices.

For matrices ``X`` and ``Y`` with left singular vectors ``U_X`` and ``U_Y`` (columns ordered by
decreasing singular value), the LoRA paper's similarity of their top-``i`` and top-``j`` subspaces is

    phi(X, Y, i, j) = || U_X[:, :i]^T U_Y[:, :j] ||_F^2 / min(i, j)      in [0, 1].

It is 1 when one subspace contains the other, 0 when they are orthogonal, and about
``max(i, j) / d`` for independent uniformly random subspaces of ``R^d``. It depends only on the
subspaces, so rotating (or re-scaling) the columns of ``X`` within its column space leaves it unchanged
as long as the singular-value ordering that picks the top-``i`` directions is unchanged.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["subspace_similarity", "similarity_matrix", "left_singular_vectors"]


def left_singular_vectors(matrix: np.ndarray) -> np.ndarray:
    """Left singular vectors of a 2-D matrix, columns ordered by decreasing singular value.

    Example:
      >>> np.abs(left_singular_vectors(np.diag([1.0, 2.0]))[:, 0])
      array([0., 1.])
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"Expected a 2-D matrix (d, r), got shape {matrix.shape}.")
    u, _, _ = np.linalg.svd(matrix, full_matrices=False)
    return u


def _check_count(count, available, label):
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"{label} must be a positive integer, got {count!r}.")
    if count > available:
        raise ValueError(
            f"{label}={count} exceeds the {available} singular directions available; "
            f"pass {label} <= {available} (the matrix's number of columns, or its number of rows if fewer).")


def subspace_similarity(x: np.ndarray, y: np.ndarray, i: Optional[int] = None, j: Optional[int] = None) -> float:
    """``phi(X, Y, i, j) = ||U_X[:, :i]^T U_Y[:, :j]||_F^2 / min(i, j)``.

    Args:
      x, y: matrices with the same number of rows ``d``.
      i, j: how many top left singular vectors of ``x`` and ``y`` to compare (default: all).

    Example:
      >>> x = np.eye(4)[:, :2]
      >>> subspace_similarity(x, x)
      1.0
      >>> subspace_similarity(x, np.eye(4)[:, 2:])
      0.0
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"subspace_similarity compares column spaces, so x and y must be 2-D with the same number "
            f"of rows; got shapes {x.shape} and {y.shape}.")
    u_x, u_y = left_singular_vectors(x), left_singular_vectors(y)
    i = u_x.shape[1] if i is None else i
    j = u_y.shape[1] if j is None else j
    _check_count(i, u_x.shape[1], "i")
    _check_count(j, u_y.shape[1], "j")
    overlap = u_x[:, :i].T @ u_y[:, :j]
    return float(np.sum(overlap ** 2) / min(i, j))


def similarity_matrix(matrices: Sequence[np.ndarray], others: Optional[Sequence[np.ndarray]] = None,
                      i: Optional[int] = None, j: Optional[int] = None) -> np.ndarray:
    """``S[p, q] = phi(matrices[p], others[q], i, j)`` (``others`` defaults to ``matrices``).

    Example:
      >>> rng = np.random.default_rng(0)
      >>> mats = [rng.normal(size=(8, 2)) for _ in range(3)]
      >>> bool(np.allclose(np.diag(similarity_matrix(mats)), 1.0))
      True
    """
    others = matrices if others is None else others
    if len(matrices) == 0 or len(others) == 0:
        raise ValueError("similarity_matrix needs at least one matrix on each side.")
    bases_p = [left_singular_vectors(m) for m in matrices]
    bases_q = bases_p if others is matrices else [left_singular_vectors(m) for m in others]
    rows = bases_p[0].shape[0]
    for u in list(bases_p) + list(bases_q):
        if u.shape[0] != rows:
            raise ValueError(f"All matrices must have the same number of rows; got {rows} and {u.shape[0]}.")
    i = min(u.shape[1] for u in bases_p) if i is None else i
    j = min(u.shape[1] for u in bases_q) if j is None else j
    for u in bases_p:
        _check_count(i, u.shape[1], "i")
    for u in bases_q:
        _check_count(j, u.shape[1], "j")
    result = np.empty((len(bases_p), len(bases_q)))
    for p, u_p in enumerate(bases_p):
        for q, u_q in enumerate(bases_q):
            result[p, q] = np.sum((u_p[:, :i].T @ u_q[:, :j]) ** 2) / min(i, j)
    return result
