"""CondLoRA's conversion-matrix analysis (Kim et al. 2024, Figure 1 and Table 3) for trained adapters.

For every adapted square module, ``C_A = W0^{-1} A^T`` and ``C_B = W0^{-1} B`` (``W0`` the PyTorch-layout
frozen weight); the script compares every pair of layers of one module type by the subspace similarity
``phi(i=j=rank)`` and compares with independent Gaussian matrices of the same shape.

Input: adapter folders written by train.py (``<workdir>/adapter``, jaxlora's native format); the frozen
model is loaded from ``--base-model`` (default: the ``base_model`` the adapter's metadata names). Or
``.npz`` files written by :func:`jaxlora.theory.save_factors_npz`:

    factors = jaxlora.to_lora_factors(frozen, adapter, cfg)
    jaxlora.theory.save_factors_npz("lora_factors.npz", frozen, factors)

Usage:
    python experiments/conversion_matrices.py --lora runs/lora_sst2/adapter --condlora runs/condlora_sst2/adapter \
        --out runs/conversion
    python experiments/conversion_matrices.py --lora lora_factors.npz --out runs/conversion

Writes into ``--out``: ``layer_similarity.csv`` (module, factor, layer pair, phi, random phi),
``summary.csv`` (mean off-diagonal phi per module and factor against two baselines: independent
Gaussian matrices, as in the paper, and ``W0^{-1} G`` with Gaussian ``G``, which shows how much of
the similarity the frozen weights alone would produce),
``theory_conversion_<module>.png`` heat maps and, with ``--condlora``, ``lora_vs_condlora.csv`` (Table 3).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import warnings
from typing import Mapping, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's jaxlora

import numpy as np

from jaxlora import theory


def off_diagonal_mean(matrix: np.ndarray) -> float:
    """Mean of the entries off the diagonal (the diagonal is 1 by definition)."""
    matrix = np.asarray(matrix)
    mask = ~np.eye(matrix.shape[0], dtype=bool)
    return float(matrix[mask].mean()) if mask.any() else float("nan")


def analyse(frozen: Mapping, factors: Mapping, out_dir: str, rank: Optional[int] = None, seed: int = 0,
            condlora_frozen: Optional[Mapping] = None, condlora_factors: Optional[Mapping] = None,
            label: str = "LoRA") -> dict:
    """Runs the whole analysis on in-memory arrays and writes CSVs and heat maps into ``out_dir``.

    ``factors`` is ``{module_path: obj with .a (d_in, r), .b (r, d_out)}``, e.g. the output of
    ``jaxlora.to_lora_factors``. Returns ``{"report": {module: ModuleSimilarity}, "summary": [...],
    "table3": {...} or None}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    conversions = theory.conversion_from_factors(frozen, factors)
    report = theory.similarity_report(conversions, rank=rank, seed=seed)
    kernels = theory.group_by_module({path: _kernel(frozen, path) for path in conversions})

    pair_rows, summary = [], []
    for module, result in report.items():
        stricter = theory.inverse_weight_random_similarity([k for _, k in kernels[module]],
                                                            columns=_columns(conversions, module), rank=rank,
                                                            seed=seed + 1000)
        for p, layer_p in enumerate(result.layers):
            for q, layer_q in enumerate(result.layers):
                for factor, matrix in (("C_A", result.c_a), ("C_B", result.c_b)):
                    pair_rows.append({"module": module, "factor": factor, "layer_p": layer_p, "layer_q": layer_q,
                                      "phi": matrix[p, q], "random_phi": result.random[p, q],
                                      "inverse_weight_random_phi": stricter[p, q]})
        for factor, matrix in (("C_A", result.c_a), ("C_B", result.c_b)):
            summary.append({"module": module, "factor": factor, "layers": len(result.layers),
                            "mean_offdiag_phi": off_diagonal_mean(matrix),
                            "mean_offdiag_random_phi": off_diagonal_mean(result.random),
                            "mean_offdiag_inverse_weight_random_phi": off_diagonal_mean(stricter)})
        theory.plot_similarity_heatmaps(
            {f"{label} C_A ({module})": result.c_a, f"{label} C_B ({module})": result.c_b,
             "random Gaussian": result.random, "W0^-1 x random Gaussian": stricter},
            os.path.join(out_dir, f"theory_conversion_{module}.png"), layer_labels=result.layers,
            title=f"subspace similarity phi(i=j={rank or _columns(conversions, module)}) between layers")
    _write(os.path.join(out_dir, "layer_similarity.csv"), pair_rows)
    _write(os.path.join(out_dir, "summary.csv"), summary)

    table3 = None
    if condlora_factors is not None:
        cond = theory.conversion_from_factors(condlora_frozen if condlora_frozen is not None else frozen,
                                              condlora_factors)
        table3 = theory.lora_condlora_similarity(conversions, cond, rank=rank)
        rows = [{"module": module, "layer": layer, "phi_C_A": values["c_a"][k], "phi_C_B": values["c_b"][k]}
                for module, values in table3.items() for k, layer in enumerate(values["layers"])]
        _write(os.path.join(out_dir, "lora_vs_condlora.csv"), rows)
    return {"report": report, "summary": summary, "table3": table3}


def _kernel(frozen: Mapping, path: tuple) -> np.ndarray:
    node = frozen
    for name in path:
        node = node[name]
    return np.asarray(node["kernel"])


def _columns(conversions: Mapping, module: str) -> int:
    return next(value.c_a.shape[1] for path, value in conversions.items() if path[-1] == module)


def _write(path: str, rows: Sequence[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


def load_factors(source: str, base_model: Optional[str] = None) -> tuple:
    """``(frozen params, {module_path: LoraFactors})`` from a native adapter folder or a ``.npz`` file."""
    if os.path.isfile(source):
        return theory.load_factors_npz(source)
    if not os.path.isdir(source):
        raise FileNotFoundError(
            f"{source} is neither an adapter folder (train.py writes <workdir>/adapter) nor an .npz from "
            "jaxlora.theory.save_factors_npz.")
    import jaxlora
    from jaxlora import interop
    from jaxlora.models import from_pretrained

    adapter, config, metadata = interop.load_adapter(source)
    base = base_model or metadata.get("base_model")
    if not base:
        raise ValueError(f"{source} does not name its base model in its metadata; pass --base-model.")
    # The frozen kernels are all the analysis needs; the classifier head is irrelevant, so any size works
    # (and the warning that it is freshly initialised is noise here).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, frozen = from_pretrained(base, task="sequence_classification")
    return frozen, jaxlora.to_lora_factors(frozen, adapter, config)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lora", required=True,
                        help="trained LoRA: native adapter folder (train.py's <workdir>/adapter) or .npz")
    parser.add_argument("--condlora", default=None, help="optional trained CondLoRA, folder or .npz (Table 3)")
    parser.add_argument("--base-model", default=None,
                        help="frozen model for adapter folders (default: the adapter metadata's base_model)")
    parser.add_argument("--rank", type=int, default=None, help="i = j of phi (default: the adapter's rank)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random Gaussian baseline")
    parser.add_argument("--out", default="runs/conversion_matrices", help="output directory")
    args = parser.parse_args(argv)

    for path in (args.lora, args.condlora):
        if path is not None and not os.path.exists(path):
            parser.error(f"{path} does not exist; pass an adapter folder written by train.py (<workdir>/adapter) "
                         "or an .npz from jaxlora.theory.save_factors_npz(path, frozen, factors).")
    frozen, factors = load_factors(args.lora, args.base_model)
    cond_frozen, cond_factors = load_factors(args.condlora, args.base_model) if args.condlora else (None, None)
    result = analyse(frozen, factors, args.out, args.rank, args.seed, cond_frozen, cond_factors)
    for row in result["summary"]:
        print(f"{row['module']:>10s} {row['factor']}: mean phi between layers {row['mean_offdiag_phi']:.3f} "
              f"(random {row['mean_offdiag_random_phi']:.3f}, W0^-1 x random "
              f"{row['mean_offdiag_inverse_weight_random_phi']:.3f}, {row['layers']} layers)")
    if result["table3"]:
        for module, values in result["table3"].items():
            print(f"{module:>10s} LoRA vs CondLoRA per layer: C_A {np.round(values['c_a'], 3)} "
                  f"C_B {np.round(values['c_b'], 3)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
