"""Conversion matrices C_A = W0^{-1} A^T, C_B = W0^{-1} B, their layer similarity and the scripts."""

import csv
import importlib.util
import pathlib
from types import SimpleNamespace

import numpy as np
import pytest

from jaxlora import theory

REPO = pathlib.Path(__file__).resolve().parents[2]


def _frozen(num_layers, dim, seed):
    rng = np.random.default_rng(seed)
    return {"encoder": {f"layer_{l}": {name: {"kernel": rng.normal(size=(dim, dim)) / np.sqrt(dim)}
                                       for name in ("query", "value")} for l in range(num_layers)}}


def test_conversion_matrices_reproduce_the_factors():
    rng = np.random.default_rng(0)
    kernel, a, b = rng.normal(size=(12, 12)), rng.normal(size=(12, 4)), rng.normal(size=(4, 12))
    conv = theory.conversion_matrices(kernel, a, b)
    w0 = kernel.T  # PyTorch layout
    np.testing.assert_allclose(w0 @ conv.c_a, a, atol=1e-10)      # A^T = W0 C_A, A = a.T
    np.testing.assert_allclose(w0 @ conv.c_b, b.T, atol=1e-10)    # B = W0 C_B, B = b.T
    with pytest.raises(ValueError, match="square frozen kernel"):
        theory.conversion_matrices(np.ones((4, 6)), np.ones((4, 2)), np.ones((2, 6)))
    with pytest.raises(ValueError, match="kernel-layout factors"):
        theory.conversion_matrices(kernel, b, a)


def test_condlora_conversion_matrices_are_its_shared_maps_in_every_layer():
    import jax
    import jaxlora

    frozen = _frozen(num_layers=4, dim=16, seed=1)
    cfg = jaxlora.AdapterConfig(variant="condlora", rank=4, alpha=4.0, targets=("query", "value"))
    adapter = jaxlora.init(jax.random.PRNGKey(0), frozen, cfg)
    rng = np.random.default_rng(2)
    lowrank = jax.tree.map(lambda leaf: np.asarray(leaf), adapter.trainable["lowrank"])
    for module in ("query", "value"):
        lowrank[module]["theta_b"] = rng.normal(size=lowrank[module]["theta_b"].shape).astype(np.float32)
    adapter = adapter._replace(trainable={**adapter.trainable, "lowrank": lowrank})
    conversions = theory.conversion_from_factors(frozen, jaxlora.to_lora_factors(frozen, adapter, cfg))
    assert len(conversions) == 8
    for path, conv in conversions.items():
        theta = lowrank[path[-1]]
        np.testing.assert_allclose(conv.c_a, theta["theta_a"].T, atol=1e-3)
        np.testing.assert_allclose(conv.c_b, theta["theta_b"].T, atol=1e-3)
    report = theory.similarity_report(conversions, rank=4)
    assert set(report) == {"query", "value"}
    for module in report.values():
        assert module.layers == [0, 1, 2, 3]
        np.testing.assert_allclose(module.c_a, 1.0, atol=1e-6)
        np.testing.assert_allclose(module.c_b, 1.0, atol=1e-6)
        off_diagonal = module.random[~np.eye(4, dtype=bool)]
        assert off_diagonal.max() < 0.75  # random 4-dim subspaces of R^16 share ~4/16


def test_shared_structure_scores_above_random_and_table3_pairs_layers():
    rng = np.random.default_rng(3)
    dim, rank, layers = 64, 8, 6
    frozen = _frozen(layers, dim, seed=4)
    shared = rng.normal(size=(dim, rank))
    lora, cond = {}, {}
    for l in range(layers):
        kernel = frozen["encoder"][f"layer_{l}"]["query"]["kernel"]
        # LoRA factors whose conversion matrices are a common map plus layer-specific noise.
        c_a = shared + 0.3 * rng.normal(size=(dim, rank))
        lora[("encoder", f"layer_{l}", "query")] = SimpleNamespace(a=kernel.T @ c_a, b=rng.normal(size=(rank, dim)))
        cond[("encoder", f"layer_{l}", "query")] = SimpleNamespace(a=kernel.T @ shared, b=rng.normal(size=(rank, dim)))
    lora_conv = theory.conversion_from_factors(frozen, lora)
    module = theory.similarity_report(lora_conv, rank=rank)["query"]
    mask = ~np.eye(layers, dtype=bool)
    assert module.c_a[mask].mean() > 0.5 > 2 * module.random[mask].mean()
    table = theory.lora_condlora_similarity(lora_conv, theory.conversion_from_factors(frozen, cond), rank=rank)
    assert table["query"]["layers"] == list(range(layers))
    assert np.all(table["query"]["c_a"] > 0.8)
    # Unrelated B factors still look alike through the same W0^{-1}, but less than the shared C_A.
    assert np.all(table["query"]["c_b"] < table["query"]["c_a"] - 0.2)
    kernels = [frozen["encoder"][f"layer_{l}"]["query"]["kernel"] for l in range(layers)]
    stricter = theory.inverse_weight_random_similarity(kernels, rank, rank=rank)
    assert module.c_a[mask].mean() > stricter[mask].mean() + 0.3


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_conversion_script_writes_csvs_and_heatmaps(tmp_path):
    rng = np.random.default_rng(5)
    frozen = _frozen(3, 16, seed=6)
    factors = {("encoder", f"layer_{l}", m): SimpleNamespace(a=rng.normal(size=(16, 4)), b=rng.normal(size=(4, 16)))
               for l in range(3) for m in ("query", "value")}
    npz = theory.save_factors_npz(str(tmp_path / "lora.npz"), frozen, factors)
    script = _load_script("conversion_matrices")
    script.main(["--lora", npz, "--condlora", npz, "--rank", "4", "--out", str(tmp_path / "out")])
    out = tmp_path / "out"
    for name in ("layer_similarity.csv", "summary.csv", "lora_vs_condlora.csv",
                 "theory_conversion_query.png", "theory_conversion_value.png"):
        assert (out / name).stat().st_size > 0
    with open(out / "lora_vs_condlora.csv") as handle:
        table = list(csv.DictReader(handle))
    # The same adapter on both sides: every layer's matrices coincide with themselves.
    assert len(table) == 6
    assert all(abs(float(row["phi_C_A"]) - 1) < 1e-9 and abs(float(row["phi_C_B"]) - 1) < 1e-9 for row in table)
    with pytest.raises(SystemExit):
        script.main(["--lora", str(tmp_path / "missing.npz")])
