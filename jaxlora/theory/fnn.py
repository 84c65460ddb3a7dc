"""LoRA's expressive power on ReLU fully connected networks (Zeng & Lee, ICLR 2024).

The networks here act on column vectors and put a ReLU after every layer but the last:

    f(x) = W_L relu(... relu(W_1 x + b_1) ...) + b_L.

A frozen network of depth ``L`` is adapted towards a target of depth ``L_bar <= L`` by rank-``R``
updates of its weights and by new biases. The construction splits the frozen layers into
``L_bar`` consecutive groups of ``M = floor(L / L_bar)`` layers (the last group takes the
remainder) and makes group ``i`` compute target layer ``i``:

- weights: the linear construction (:mod:`jaxlora.theory.linear`) on the group's weights towards
  ``W_bar_i``; its error is ``sigma_{R M_i + 1}(E_i)`` with ``E_i = W_bar_i - prod(group weights)``;
- biases: every layer of a group except the last gets a constant bias large enough that its ReLU
  stays active on a sample of inputs (so the group acts as one affine map), and the group's last
  bias cancels what those constants add and contributes ``b_bar_i``.

The adapted network then equals the target exactly on inputs where the grouped ReLUs stay
active, once ``R >= max_i ceil(rank(E_i) / M_i)``; :func:`fnn_relus_active` says which inputs those
are. Arrays are float64 numpy; :func:`fnn_forward` also accepts ``xp=jax.numpy`` so the same model
definition serves gradient training.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from jaxlora.theory import linear

__all__ = [
    "DenseLayer",
    "FNNConstruction",
    "fnn_forward",
    "fnn_group_layout",
    "fnn_construction",
    "fnn_construction_errors",
    "fnn_rank_threshold",
    "fnn_relus_active",
    "random_fnn",
]


class DenseLayer(NamedTuple):
    """One layer ``x -> weight @ x + bias`` (``weight``: ``(D_out, D_in)``, column-vector convention)."""

    weight: np.ndarray
    bias: np.ndarray


class FNNConstruction(NamedTuple):
    """Result of :func:`fnn_construction`.

    Attributes:
      layers: the adapted network, ``[DenseLayer(W_l + Delta W_l, new b_l), ...]``.
      deltas: ``[Delta W_1, ..., Delta W_L]``, each of rank <= R.
      groups: ``[(start, stop), ...]``, the frozen layers ``start..stop-1`` that compute target layer i.
      group_errors: predicted ``sigma_{R M_i + 1}(E_i)`` per group (0 when the group is exact).
      group_singular_values: singular values of each ``E_i``.
    """

    layers: list
    deltas: list
    groups: list
    group_errors: list
    group_singular_values: list


def fnn_forward(layers: Sequence[DenseLayer], x, xp=np):
    """Runs the ReLU network on a batch of inputs ``x`` of shape ``(n, D)`` (one input per row).

    Example:
      >>> layer = DenseLayer(np.eye(2), np.zeros(2))
      >>> fnn_forward([layer, layer], np.array([[1.0, -1.0]]))
      array([[1., 0.]])
    """
    hidden = x
    for index, layer in enumerate(layers):
        hidden = hidden @ layer.weight.T + layer.bias
        if index < len(layers) - 1:
            hidden = xp.maximum(hidden, 0.0)
    return hidden


def fnn_group_layout(num_frozen: int, num_target: int) -> list:
    """Splits ``num_frozen`` layers into ``num_target`` consecutive groups of ``floor(L / L_bar)``.

    The last group takes the remainder.

    Example:
      >>> fnn_group_layout(5, 2)
      [(0, 2), (2, 5)]
    """
    if num_target < 1 or num_frozen < num_target:
        raise ValueError(
            f"The frozen network must be at least as deep as the target (L >= L_bar >= 1), got "
            f"L={num_frozen} frozen layers and L_bar={num_target} target layers.")
    size = num_frozen // num_target
    starts = [i * size for i in range(num_target)]
    stops = starts[1:] + [num_frozen]
    return list(zip(starts, stops))


def _as_layers(layers, name):
    try:
        layers = [DenseLayer(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in layers]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a list of (weight, bias) pairs, e.g. DenseLayer(W, b).") from err
    if not layers:
        raise ValueError(f"{name} is empty; pass at least one (weight, bias) layer.")
    dim = layers[0].weight.shape[0]
    for index, layer in enumerate(layers, start=1):
        if layer.weight.shape != (dim, dim) or layer.bias.shape != (dim,):
            raise ValueError(
                f"{name}: layer {index} has weight {layer.weight.shape} and bias {layer.bias.shape}; "
                f"the construction needs square D x D weights and (D,) biases with one D={dim}.")
    return layers


def _group_linear_parts(frozen, target):
    groups = fnn_group_layout(len(frozen), len(target))
    if frozen[0].weight.shape != target[0].weight.shape:
        raise ValueError(
            f"Frozen width {frozen[0].weight.shape[0]} differs from target width "
            f"{target[0].weight.shape[0]}; both networks must have the same width D.")
    parts = []
    for (start, stop), target_layer in zip(groups, target):
        parts.append(([layer.weight for layer in frozen[start:stop]], target_layer.weight))
    return groups, parts


def fnn_construction_errors(frozen: Sequence[DenseLayer], target: Sequence[DenseLayer], rank: int) -> list:
    """Predicted per-group errors ``sigma_{R M_i + 1}(E_i)`` of the FNN construction.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> net = lambda n: random_fnn(rng, width=4, depth=n)
      >>> fnn_construction_errors(net(2), net(1), rank=2)
      [0.0]
    """
    frozen, target = _as_layers(frozen, "frozen"), _as_layers(target, "target")
    _, parts = _group_linear_parts(frozen, target)
    return [linear.linear_construction_error(ws, w_bar, rank) for ws, w_bar in parts]


def fnn_rank_threshold(frozen: Sequence[DenseLayer], target: Sequence[DenseLayer], tol: float = 1e-10) -> int:
    """Smallest rank at which the construction is exact: ``max_i ceil(rank(E_i) / M_i)``.

    ``tol`` is relative to the largest singular value of each ``E_i``.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> fnn_rank_threshold(random_fnn(rng, 16, 4), random_fnn(rng, 16, 2))
      8
    """
    frozen, target = _as_layers(frozen, "frozen"), _as_layers(target, "target")
    _, parts = _group_linear_parts(frozen, target)
    threshold = 0
    for ws, w_bar in parts:
        s = np.linalg.svd(w_bar - linear.chain_product(ws), compute_uv=False)
        error_rank = int(np.sum(s > tol * max(s[0], np.finfo(float).tiny)))
        threshold = max(threshold, math.ceil(error_rank / len(ws)))
    return threshold


def fnn_construction(frozen: Sequence[DenseLayer], target: Sequence[DenseLayer], rank: int,
                     calibration_inputs: np.ndarray, margin: float = 3.0) -> FNNConstruction:
    """Rank-``rank`` weight updates and new biases adapting ``frozen`` towards ``target``.

    Args:
      frozen: ``L`` layers of width ``D``.
      target: ``L_bar <= L`` layers of width ``D``.
      rank: LoRA rank per layer.
      calibration_inputs: ``(n, D)`` inputs drawn like the inputs the network will see; the
        constant biases inside each group are ``margin`` times the largest pre-activation
        magnitude seen on them, so unseen inputs keep their ReLUs active with a wide margin.
      margin: safety factor (>= 1) on the calibration bias.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> frozen, target = random_fnn(rng, 4, 2), random_fnn(rng, 4, 1)
      >>> x = rng.normal(size=(64, 4))
      >>> out = fnn_construction(frozen, target, rank=2, calibration_inputs=x)
      >>> bool(np.allclose(fnn_forward(out.layers, x), fnn_forward(target, x)))
      True
    """
    frozen, target = _as_layers(frozen, "frozen"), _as_layers(target, "target")
    groups, parts = _group_linear_parts(frozen, target)
    calibration_inputs = np.asarray(calibration_inputs, np.float64)
    dim = frozen[0].weight.shape[0]
    if calibration_inputs.ndim != 2 or calibration_inputs.shape[1] != dim or calibration_inputs.shape[0] < 1:
        raise ValueError(
            f"calibration_inputs must have shape (n, {dim}) with n >= 1 (one input per row), "
            f"got {calibration_inputs.shape}.")
    if margin < 1.0:
        raise ValueError(f"margin must be >= 1 so the calibrated ReLUs stay active, got {margin}.")

    layers, deltas, errors, singular_values = [], [], [], []
    group_input = calibration_inputs
    for group_index, ((start, stop), (weights, w_bar)) in enumerate(zip(groups, parts)):
        details = linear.linear_construction_details(weights, w_bar, rank)
        adapted = [w + d for w, d in zip(weights, details.deltas)]
        deltas.extend(details.deltas)
        errors.append(details.predicted_error)
        singular_values.append(details.singular_values)

        hidden = group_input
        offset = np.zeros(dim)  # the constant the biases so far add to the group's affine map
        for weight in adapted[:-1]:
            preactivation = hidden @ weight.T + weight @ offset
            # One constant per layer, as in the paper: big enough to keep every unit positive.
            constant = margin * float(np.max(np.abs(preactivation))) + 1.0
            bias = np.full(dim, constant)
            layers.append(DenseLayer(weight, bias))
            offset = weight @ offset + bias
            hidden = hidden @ weight.T  # the offset is carried separately
        last = adapted[-1]
        layers.append(DenseLayer(last, target[group_index].bias - last @ offset))
        group_input = fnn_forward(layers[start:stop], group_input)
        if group_index < len(groups) - 1:
            group_input = np.maximum(group_input, 0.0)
    return FNNConstruction(layers, deltas, groups, errors, singular_values)


def fnn_relus_active(construction: FNNConstruction, x: np.ndarray) -> np.ndarray:
    """Boolean per input: do all ReLUs inside the groups stay active (pre-activation >= 0)?

    The construction is exact on exactly these inputs (at or above the rank threshold).

    Example:
      >>> rng = np.random.default_rng(0)
      >>> frozen, target = random_fnn(rng, 4, 2), random_fnn(rng, 4, 1)
      >>> x = rng.normal(size=(8, 4))
      >>> bool(fnn_relus_active(fnn_construction(frozen, target, 2, x), x).all())
      True
    """
    x = np.asarray(x, np.float64)
    active = np.ones(x.shape[0], dtype=bool)
    hidden = x
    last_of_group = {stop - 1 for _, stop in construction.groups}
    for index, layer in enumerate(construction.layers):
        hidden = hidden @ layer.weight.T + layer.bias
        if index not in last_of_group:
            active &= np.all(hidden >= 0.0, axis=1)
        if index < len(construction.layers) - 1:
            hidden = np.maximum(hidden, 0.0)
    return active


def random_fnn(rng: np.random.Generator, width: int, depth: int) -> list:
    """A random ReLU network with PyTorch's default ``nn.Linear`` init, ``U(+-1/sqrt(width))``.

    Example:
      >>> len(random_fnn(np.random.default_rng(0), width=3, depth=2))
      2
    """
    bound = 1.0 / math.sqrt(width)
    return [DenseLayer(rng.uniform(-bound, bound, (width, width)), rng.uniform(-bound, bound, width))
            for _ in range(depth)]
