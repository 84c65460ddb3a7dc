"""CondLoRA's conversion matrices: how alike are the LoRA factors of different layers?

For a layer with frozen weight ``W0`` (PyTorch layout ``(d_out, d_in)``, i.e. ``W0 = K.T`` for a
Flax kernel ``K``) and trained LoRA factors ``A`` ``(r, d_in)`` and ``B`` ``(d_out, r)`` (PEFT's
``lora_A.weight`` and ``lora_B.weight``; in kernel layout ``a = A.T``, ``b = B.T``), Kim et al.
define the conversion matrices

    C_A = W0^{-1} A^T,      C_B = W0^{-1} B         (both (d, r), W0 square)

which map the frozen weight to its LoRA factors (``A^T = W0 C_A``). If one linear map could produce
every layer's factors from its weight, the ``C``'s of different layers would span similar subspaces.
The analysis compares every pair of layers with the subspace similarity ``phi(i=j=r)``
(:mod:`jaxlora.theory.subspace`) against random Gaussian matrices of the same shape as the baseline.
For CondLoRA itself ``a_l = K_l.T theta_A.T`` and ``b_l = theta_B K_l``, so ``C_A = theta_A^T`` and
``C_B = theta_B^T`` in every layer.

Everything takes plain arrays: ``conversion_matrices(kernel, a, b)`` for one layer and
:func:`conversion_from_factors` for the ``{module_path: LoraFactors(a, b, scale)}`` mapping that
``jaxlora.to_lora_factors`` returns.
"""

from __future__ import annotations

import re
from typing import Mapping, NamedTuple, Optional, Sequence

import numpy as np
import scipy.linalg

from jaxlora.theory import subspace

__all__ = [
    "ConversionMatrices",
    "conversion_matrices",
    "conversion_from_factors",
    "group_by_module",
    "layer_similarity",
    "random_similarity",
    "paired_similarity",
    "plot_similarity_heatmaps",
    "inverse_weight_random_similarity",
    "ModuleSimilarity",
    "similarity_report",
    "lora_condlora_similarity",
    "save_factors_npz",
    "load_factors_npz",
]


class ConversionMatrices(NamedTuple):
    """``c_a = W0^{-1} A^T`` and ``c_b = W0^{-1} B``, both ``(d, r)``."""

    c_a: np.ndarray
    c_b: np.ndarray


def conversion_matrices(kernel: np.ndarray, a: np.ndarray, b: np.ndarray) -> ConversionMatrices:
    """Conversion matrices of one layer from its Flax kernel ``K`` ``(d_in, d_out)`` and kernel-layout
    LoRA factors ``a`` ``(d_in, r)``, ``b`` ``(r, d_out)``.

    ``W0 = K.T``, ``A^T = a`` and ``B = b.T``, so ``C_A = solve(K.T, a)`` and ``C_B = solve(K.T, b.T)``.

    Example:
      >>> k = np.diag([2.0, 4.0])
      >>> conversion_matrices(k, a=np.array([[2.0], [0.0]]), b=np.array([[0.0, 4.0]])).c_b
      array([[0.],
             [1.]])
    """
    kernel = np.asarray(kernel, np.float64)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(
            f"Conversion matrices need a square frozen kernel (W0^{{-1}} must exist); got shape {kernel.shape}. "
            "Restrict the analysis to square modules such as attention query/value.")
    d = kernel.shape[0]
    if a.ndim != 2 or a.shape[0] != d or b.ndim != 2 or b.shape[1] != d or a.shape[1] != b.shape[0]:
        raise ValueError(
            f"Expected kernel-layout factors a: ({d}, r) and b: (r, {d}) for a ({d}, {d}) kernel; got "
            f"a {a.shape} and b {b.shape}. (PEFT's lora_A.weight is a.T and lora_B.weight is b.T.)")
    w0 = kernel.T
    return ConversionMatrices(scipy.linalg.solve(w0, a), scipy.linalg.solve(w0, b.T))


def _lookup_kernel(frozen: Mapping, path: Sequence[str]) -> np.ndarray:
    node = frozen
    for name in path:
        if not isinstance(node, Mapping) or name not in node:
            raise KeyError(f"Module path {'/'.join(path)!r} not found in the frozen parameters "
                           f"(missing {name!r}); pass the plain params dict the adapter was made for.")
        node = node[name]
    if isinstance(node, Mapping):
        node = node.get("kernel")
    if node is None:
        raise KeyError(f"No 'kernel' under module {'/'.join(path)!r} in the frozen parameters.")
    return np.asarray(node)


def conversion_from_factors(frozen: Mapping, factors: Mapping) -> dict:
    """``{module_path: ConversionMatrices}`` for every square module in ``factors``.

    Args:
      frozen: the plain nested params dict (``frozen[...path...]["kernel"]`` is ``(d_in, d_out)``).
      factors: ``{module_path_tuple: obj}`` where ``obj`` has ``.a`` ``(d_in, r)`` and ``.b``
        ``(r, d_out)``, e.g. the output of ``jaxlora.to_lora_factors(frozen, adapter, cfg)``.
        Non-square modules are skipped (their ``W0`` has no inverse).

    Example:
      >>> from types import SimpleNamespace
      >>> frozen = {"layer_0": {"query": {"kernel": np.eye(2)}}}
      >>> f = {("layer_0", "query"): SimpleNamespace(a=np.ones((2, 1)), b=np.ones((1, 2)))}
      >>> list(conversion_from_factors(frozen, f))
      [('layer_0', 'query')]
    """
    result = {}
    for path, factor in factors.items():
        path = tuple(path.split("/")) if isinstance(path, str) else tuple(path)
        kernel = _lookup_kernel(frozen, path)
        if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
            continue
        result[path] = conversion_matrices(kernel, np.asarray(factor.a), np.asarray(factor.b))
    if not result:
        raise ValueError("No square module among the given factors; conversion matrices need d_in == d_out.")
    return result


_LAYER_PATTERN = re.compile(r"(?:^|[_.])(\d+)$")


def _layer_index(path: Sequence[str]) -> int:
    for name in path:
        if name.isdigit():
            return int(name)
        match = _LAYER_PATTERN.search(name)
        if match and ("layer" in name or name.startswith("h_") or name.startswith("block")):
            return int(match.group(1))
    raise ValueError(
        f"Cannot find a layer index in module path {'/'.join(path)!r}; expected a part like 'layer_3' or '3'.")


def group_by_module(conversions: Mapping) -> dict:
    """Groups per-path results by module type (the path's last name), ordered by layer index.

    Returns ``{module_type: [(layer_index, value), ...]}``.

    Example:
      >>> group_by_module({("layer_1", "query"): "q1", ("layer_0", "query"): "q0", ("layer_0", "value"): "v0"})
      {'query': [(0, 'q0'), (1, 'q1')], 'value': [(0, 'v0')]}
    """
    groups: dict = {}
    for path, value in conversions.items():
        path = tuple(path.split("/")) if isinstance(path, str) else tuple(path)
        groups.setdefault(path[-1], []).append((_layer_index(path), value))
    return {name: sorted(items, key=lambda item: item[0]) for name, items in sorted(groups.items())}


def layer_similarity(matrices: Sequence[np.ndarray], rank: Optional[int] = None) -> np.ndarray:
    """Layer x layer ``phi(C_p, C_q, i=rank, j=rank)`` (``rank`` defaults to the matrices' column count).

    Example:
      >>> rng = np.random.default_rng(0)
      >>> layer_similarity([rng.normal(size=(16, 8))] * 2)
      array([[1., 1.],
             [1., 1.]])
    """
    return subspace.similarity_matrix(list(matrices), i=rank, j=rank)


def random_similarity(num_layers: int, shape: tuple, rank: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """The baseline: :func:`layer_similarity` of ``num_layers`` independent ``N(0, 1)`` matrices of ``shape``.

    Example:
      >>> s = random_similarity(3, (768, 8))
      >>> bool(s[0, 1] < 0.05)
      True
    """
    rng = np.random.default_rng(seed)
    return layer_similarity([rng.normal(size=shape) for _ in range(num_layers)], rank)


def inverse_weight_random_similarity(kernels: Sequence[np.ndarray], columns: int, rank: Optional[int] = None,
                                     seed: int = 0) -> np.ndarray:
    """A stricter baseline: :func:`layer_similarity` of ``W0_l^{-1} G_l`` with independent Gaussian ``G_l``.

    ``W0^{-1}`` is anisotropic, so even unrelated factors pushed through it share its dominant
    directions; comparing against this separates "the trained factors are alike" from "the frozen
    weights are alike". ``kernels`` are the layers' Flax kernels ``K`` (``W0 = K.T``).

    Example:
      >>> s = inverse_weight_random_similarity([np.eye(64)] * 3, columns=4)
      >>> bool(s[0, 1] < 0.3)
      True
    """
    rng = np.random.default_rng(seed)
    matrices = [scipy.linalg.solve(np.asarray(k, np.float64).T, rng.normal(size=(np.shape(k)[0], columns)))
                for k in kernels]
    return layer_similarity(matrices, rank)


def paired_similarity(first: Sequence[np.ndarray], second: Sequence[np.ndarray],
                      rank: Optional[int] = None) -> np.ndarray:
    """Per-layer ``phi(first[l], second[l], rank, rank)``, e.g. LoRA's against CondLoRA's ``C_A`` (Table 3).

    Example:
      >>> x = np.eye(4)[:, :2]
      >>> paired_similarity([x, x], [x, np.eye(4)[:, 2:]])
      array([1., 0.])
    """
    if len(first) != len(second):
        raise ValueError(f"Need one matrix per layer on both sides; got {len(first)} and {len(second)}.")
    return np.array([subspace.subspace_similarity(p, q, rank, rank) for p, q in zip(first, second)])


def plot_similarity_heatmaps(panels: Mapping[str, np.ndarray], path: str, layer_labels: Optional[Sequence] = None,
                             title: Optional[str] = None) -> str:
    """Writes one heat map per ``{panel_title: layer x layer matrix}`` side by side to ``path`` (PNG).

    Example:
      >>> import os, tempfile
      >>> out = plot_similarity_heatmaps({"random": np.eye(3)}, os.path.join(tempfile.mkdtemp(), "h.png"))
      >>> os.path.exists(out)
      True
    """
    # A bare Figure draws with Agg and leaves pyplot's backend alone (a notebook keeps plotting inline).
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("plot_similarity_heatmaps needs at least one panel.")
    fig = Figure(figsize=(3.6 * len(panels) + 0.8, 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    image = None
    for axis, (name, matrix) in zip(axes[0], panels.items()):
        matrix = np.asarray(matrix)
        image = axis.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        axis.set_title(name, fontsize=9)
        labels = layer_labels if layer_labels is not None else range(matrix.shape[0])
        axis.set_xticks(range(matrix.shape[1]), [str(v) for v in labels][:matrix.shape[1]], fontsize=7)
        axis.set_yticks(range(matrix.shape[0]), [str(v) for v in labels][:matrix.shape[0]], fontsize=7)
        axis.set_xlabel("layer")
        axis.set_ylabel("layer")
    fig.colorbar(image, ax=list(axes[0]), fraction=0.046, pad=0.04, label="phi")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


class ModuleSimilarity(NamedTuple):
    """Layer x layer similarities of one module type (e.g. ``"query"``).

    Attributes:
      layers: layer indices, in the order of the matrices' rows and columns.
      c_a, c_b: ``phi`` between the layers' ``C_A`` (resp. ``C_B``) matrices.
      random: the same for independent Gaussian matrices of ``C_A``'s shape (the baseline).
    """

    layers: list
    c_a: np.ndarray
    c_b: np.ndarray
    random: np.ndarray


def similarity_report(conversions: Mapping, rank: Optional[int] = None, seed: int = 0) -> dict:
    """``{module_type: ModuleSimilarity}`` from ``{module_path: ConversionMatrices}``.

    ``rank`` is the paper's ``i = j`` (8 for r=8 adapters); it defaults to the factors' rank.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> conv = {("layer_%d" % l, "query"): ConversionMatrices(rng.normal(size=(8, 2)), rng.normal(size=(8, 2)))
      ...         for l in range(3)}
      >>> similarity_report(conv)["query"].c_a.shape
      (3, 3)
    """
    report = {}
    for offset, (module, items) in enumerate(group_by_module(conversions).items()):
        layers = [layer for layer, _ in items]
        c_a = [value.c_a for _, value in items]
        c_b = [value.c_b for _, value in items]
        report[module] = ModuleSimilarity(
            layers, layer_similarity(c_a, rank), layer_similarity(c_b, rank),
            random_similarity(len(items), c_a[0].shape, rank, seed=seed + offset))
    return report


def lora_condlora_similarity(lora: Mapping, condlora: Mapping, rank: Optional[int] = None) -> dict:
    """Per-layer ``phi`` between a LoRA's and a CondLoRA's conversion matrices (the paper's Table 3).

    Returns ``{module_type: {"layers": [...], "c_a": array, "c_b": array}}`` over the layers both have.

    Example:
      >>> x = np.eye(4)[:, :2]
      >>> conv = {("layer_0", "value"): ConversionMatrices(x, x)}
      >>> lora_condlora_similarity(conv, conv)["value"]["c_a"]
      array([1.])
    """
    first, second = group_by_module(lora), group_by_module(condlora)
    result = {}
    for module in sorted(set(first) & set(second)):
        mine, theirs = dict(first[module]), dict(second[module])
        layers = sorted(set(mine) & set(theirs))
        result[module] = {
            "layers": layers,
            "c_a": paired_similarity([mine[l].c_a for l in layers], [theirs[l].c_a for l in layers], rank),
            "c_b": paired_similarity([mine[l].c_b for l in layers], [theirs[l].c_b for l in layers], rank),
        }
    if not result:
        raise ValueError("The LoRA and CondLoRA factors share no module type; adapt the same modules in both.")
    return result


def save_factors_npz(path: str, frozen: Mapping, factors: Mapping) -> str:
    """Saves what the analysis needs (each module's frozen kernel and kernel-layout ``a``, ``b``) to ``.npz``.

    Keys are ``"<module/path>|kernel"``, ``"<module/path>|a"``, ``"<module/path>|b"``; use it on the
    output of ``jaxlora.to_lora_factors(frozen, adapter, cfg)``.

    Example:
      >>> import os, tempfile
      >>> from types import SimpleNamespace
      >>> frozen = {"layer_0": {"query": {"kernel": np.eye(2)}}}
      >>> f = {("layer_0", "query"): SimpleNamespace(a=np.ones((2, 1)), b=np.ones((1, 2)))}
      >>> out = save_factors_npz(os.path.join(tempfile.mkdtemp(), "f.npz"), frozen, f)
      >>> sorted(load_factors_npz(out)[1])
      [('layer_0', 'query')]
    """
    arrays = {}
    for module_path, factor in factors.items():
        module_path = tuple(module_path.split("/")) if isinstance(module_path, str) else tuple(module_path)
        name = "/".join(module_path)
        arrays[f"{name}|kernel"] = np.asarray(_lookup_kernel(frozen, module_path), np.float32)
        arrays[f"{name}|a"] = np.asarray(factor.a, np.float32)
        arrays[f"{name}|b"] = np.asarray(factor.b, np.float32)
    np.savez(path, **arrays)
    return path


class _Factors(NamedTuple):
    a: np.ndarray
    b: np.ndarray


def load_factors_npz(path: str) -> tuple:
    """Reads :func:`save_factors_npz` output: ``(frozen nested dict, {module_path: factors with .a, .b})``.

    Example:
      >>> import os, tempfile
      >>> from types import SimpleNamespace
      >>> path = os.path.join(tempfile.mkdtemp(), "f.npz")
      >>> _ = save_factors_npz(path, {"h_0": {"value": {"kernel": np.eye(2)}}},
      ...                      {("h_0", "value"): SimpleNamespace(a=np.ones((2, 1)), b=np.ones((1, 2)))})
      >>> frozen, factors = load_factors_npz(path)
      >>> frozen["h_0"]["value"]["kernel"].shape, factors[("h_0", "value")].a.shape
      ((2, 2), (2, 1))
    """
    frozen: dict = {}
    factors: dict = {}
    with np.load(path) as data:
        names = {key.rsplit("|", 1)[0] for key in data.files}
        for name in sorted(names):
            missing = [part for part in ("kernel", "a", "b") if f"{name}|{part}" not in data.files]
            if missing:
                raise ValueError(f"{path}: module {name!r} lacks {missing}; each module needs '|kernel', '|a' and '|b' "
                                 "arrays (write the file with jaxlora.theory.save_factors_npz).")
            module_path = tuple(name.split("/"))
            node = frozen
            for part in module_path:
                node = node.setdefault(part, {})
            node["kernel"] = data[f"{name}|kernel"]
            factors[module_path] = _Factors(data[f"{name}|a"], data[f"{name}|b"])
    if not factors:
        raise ValueError(f"{path} holds no '<module>|kernel', '<module>|a', '<module>|b' arrays.")
    return frozen, factors
