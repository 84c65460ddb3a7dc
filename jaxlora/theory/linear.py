"""LoRA's expressive power on deep linear models (Zeng & Lee, ICLR 2024).

A frozen linear network ``f(x) = W_L ... W_1 x`` (every ``W_l`` is ``D x D``, acting on
column vectors, ``W_1`` applied first) is adapted by rank-``R`` updates ``Delta W_l`` towards a
target matrix ``W_bar``. With ``P = W_L ... W_1`` and the error ``E = W_bar - P = U S V^T``, layer
``l`` is given the singular directions ``V_l = V[:, (l-1)R : lR]`` and

    Delta W_l = Q_l^{-1} E V_l V_l^T A_{<l}^{-1},

where ``Q_l = W_L ... W_{l+1}`` (identity for the last layer) and ``A_{<l}`` is the product of the
already adapted earlier layers (identity for the first). The adapted product telescopes to
``P + E V_{:RL} V_{:RL}^T``, the frozen product plus the best rank-``RL`` approximation of ``E``, so

    || prod_l (W_l + Delta W_l) - W_bar ||_2 = sigma_{RL+1}(E)      (0 once R L >= D)

and every ``Delta W_l`` has rank at most ``R``. Everything here is float64 numpy/scipy and uses
linear solves rather than explicit inverses, so the identity holds to ~1e-12 on well conditioned
inputs.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import scipy.linalg

__all__ = [
    "LinearConstruction",
    "linear_construction",
    "linear_construction_error",
    "linear_construction_details",
    "chain_product",
    "lowrank_approximation",
]


class LinearConstruction(NamedTuple):
    """Everything the linear construction produced.

    Attributes:
      deltas: ``[Delta W_1, ..., Delta W_L]``, each ``D x D`` with rank <= ``rank``.
      error_matrix: ``E = W_bar - W_L ... W_1``.
      singular_values: singular values of ``E`` in decreasing order.
      predicted_error: ``sigma_{RL+1}(E)``, the spectral-norm error the construction attains.
    """

    deltas: list
    error_matrix: np.ndarray
    singular_values: np.ndarray
    predicted_error: float


def chain_product(matrices: Sequence[np.ndarray]) -> np.ndarray:
    """Returns ``M_L ... M_1`` for ``matrices = [M_1, ..., M_L]`` (the first is applied first).

    Example:
      >>> float(chain_product([np.eye(2), 2 * np.eye(2)])[0, 0])
      2.0
    """
    if len(matrices) == 0:
        raise ValueError("chain_product needs at least one matrix.")
    product = np.asarray(matrices[0], dtype=np.float64)
    for matrix in matrices[1:]:
        product = np.asarray(matrix, dtype=np.float64) @ product
    return product


def lowrank_approximation(matrix: np.ndarray, rank: int) -> np.ndarray:
    """Best rank-``rank`` approximation of ``matrix`` in any unitarily invariant norm (Eckart-Young).

    Example:
      >>> lowrank_approximation(np.diag([3.0, 1.0]), 1)
      array([[3., 0.],
             [0., 0.]])
    """
    u, s, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64))
    rank = min(rank, s.size)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


def _validate(frozen, target, rank, name="linear_construction"):
    if isinstance(frozen, np.ndarray) and frozen.ndim == 2:
        raise ValueError(
            f"{name}: `frozen` must be a list [W_1, ..., W_L] of D x D matrices, got a single "
            f"matrix of shape {frozen.shape}; wrap it as [W] for a one-layer model.")
    frozen = [np.asarray(w, dtype=np.float64) for w in frozen]
    if not frozen:
        raise ValueError(f"{name}: `frozen` is empty; pass at least one D x D matrix.")
    target = np.asarray(target, dtype=np.float64)
    dim = target.shape[0] if target.ndim == 2 else None
    if target.ndim != 2 or target.shape[0] != target.shape[1]:
        raise ValueError(f"{name}: `target` must be a square D x D matrix, got shape {target.shape}.")
    for index, w in enumerate(frozen, start=1):
        if w.shape != (dim, dim):
            raise ValueError(
                f"{name}: frozen W_{index} has shape {w.shape} but the target is {dim} x {dim}; "
                "every layer must be D x D (column-vector convention, f(x) = W_L ... W_1 x).")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 0:
        raise ValueError(f"{name}: `rank` must be a non-negative integer, got {rank!r}.")
    return frozen, target, int(rank)


def _right_solve(matrix: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Returns ``matrix @ a^{-1}`` by solving ``a^T y^T = matrix^T`` (no explicit inverse)."""
    return scipy.linalg.solve(a.T, matrix.T).T


def linear_construction_details(frozen: Sequence[np.ndarray], target: np.ndarray,
                                rank: int) -> LinearConstruction:
    """The linear construction with its error matrix, singular values and predicted error.

    Args:
      frozen: ``[W_1, ..., W_L]``, each ``D x D``; ``f(x) = W_L ... W_1 x``.
      target: ``W_bar``, ``D x D``.
      rank: LoRA rank ``R`` per layer.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> frozen = [rng.normal(size=(4, 4)) for _ in range(2)]
      >>> out = linear_construction_details(frozen, rng.normal(size=(4, 4)), rank=1)
      >>> bool(np.isclose(out.predicted_error, out.singular_values[2]))
      True
    """
    frozen, target, rank = _validate(frozen, target, rank, "linear_construction_details")
    num_layers, dim = len(frozen), target.shape[0]
    error = target - chain_product(frozen)
    _, singular_values, vt = np.linalg.svd(error)
    v = vt.T
    predicted = float(singular_values[rank * num_layers]) if rank * num_layers < dim else 0.0

    deltas = []
    adapted_prefix = np.eye(dim)  # A_{<l}: product of the adapted layers before l
    for layer in range(num_layers):
        directions = v[:, layer * rank:(layer + 1) * rank]  # empty once the directions run out
        if directions.shape[1] == 0:
            delta = np.zeros((dim, dim))
        else:
            projected = error @ directions @ directions.T  # E V_l V_l^T, rank <= R
            later = frozen[layer + 1:]
            left = scipy.linalg.solve(chain_product(later), projected) if later else projected
            delta = _right_solve(left, adapted_prefix) if layer > 0 else left
        deltas.append(delta)
        adapted_prefix = (frozen[layer] + delta) @ adapted_prefix
    return LinearConstruction(deltas, error, singular_values, predicted)


def linear_construction(frozen: Sequence[np.ndarray], target: np.ndarray, rank: int) -> list:
    """Rank-``rank`` updates ``[Delta W_1, ..., Delta W_L]`` making ``prod(W_l + Delta W_l)`` closest to ``target``.

    The adapted product equals the frozen product plus the best rank-``R L`` approximation of
    ``E = target - W_L ... W_1``; it is exactly ``target`` once ``R L >= D``.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> frozen = [rng.normal(size=(4, 4)) for _ in range(2)]
      >>> target = rng.normal(size=(4, 4))
      >>> deltas = linear_construction(frozen, target, rank=2)
      >>> adapted = chain_product([w + d for w, d in zip(frozen, deltas)])
      >>> bool(np.allclose(adapted, target))
      True
    """
    return linear_construction_details(frozen, target, rank).deltas


def linear_construction_error(frozen: Sequence[np.ndarray], target: np.ndarray, rank: int) -> float:
    """Predicted spectral-norm error of the construction: ``sigma_{RL+1}(E)`` (0 when ``R L >= D``).

    Example:
      >>> frozen = [np.eye(3), np.eye(3)]
      >>> linear_construction_error(frozen, np.diag([4.0, 3.0, 2.0]), rank=1)
      1.0
    """
    frozen, target, rank = _validate(frozen, target, rank, "linear_construction_error")
    dim = target.shape[0]
    if rank * len(frozen) >= dim:
        return 0.0
    singular_values = np.linalg.svd(target - chain_product(frozen), compute_uv=False)
    return float(singular_values[rank * len(frozen)])
