"""The expressive-power experiment runs end to end (CI-sized) and its CSV shows exact constructions."""

import csv
import math
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_ci_run_writes_csv_and_plots_with_exact_constructions(tmp_path):
    out = tmp_path / "ep"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, str(REPO / "experiments" / "expressive_power.py"), "--ci", "--no-progress",
                    "--out", str(out)], check=True, cwd=REPO, env=env, timeout=300, capture_output=True)
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    settings = {(row["setting"], row["frozen"]) for row in rows}
    assert {("linear", "random"), ("linear", "pretrained"), ("fnn_Lbar1", "random"),
            ("fnn_Lbar2", "random"), ("fnn_Lbar2", "pretrained"), ("tfn_L1", "random")} <= settings

    exact = [row for row in rows if row["method"] == "construction" and row["model"] in ("linear", "fnn")
             and int(row["rank"]) >= 8]
    assert exact and all(float(row["test_mse"]) < 1e-6 for row in exact)
    below = [row for row in rows if row["method"] == "construction" and int(row["rank"]) == 1]
    assert all(float(row["test_mse"]) > 1e-4 for row in below)  # rank 1 cannot reach the target
    # The TFN construction is exact at R = D/2 = 8 as well.
    assert all(float(row["test_mse"]) < 1e-6 for row in rows
               if row["method"] == "construction" and row["model"] == "tfn" and int(row["rank"]) >= 8)

    gradient = [row for row in rows if row["method"] == "gradient"]
    assert gradient and all(math.isfinite(float(row["test_mse"])) for row in gradient)
    # Training moved the LoRA away from the frozen model's error in every setting.
    assert all(float(row["test_mse"]) < float(row["frozen_test_mse"]) for row in gradient)
    pretrained = [row for row in rows if row["frozen"] == "pretrained"]
    assert all(float(row["pretrain_end"]) <= float(row["pretrain_start"]) / 3 for row in pretrained)

    with open(out / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    assert {row["method"] for row in summary} == {"construction", "gradient"}
    for name in ("theory_linear.png", "theory_fnn.png", "theory_tfn.png"):
        assert (out / name).stat().st_size > 10_000
