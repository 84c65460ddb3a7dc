"""experiments/reproduce.py on a tiny BERT with a 2 x 2 grid (2 methods x 2 seeds on SST-2, one learning rate).

The runner is killed (a real subprocess, SIGKILL) after its first finished row and started again: it finishes
the grid without rerunning a row. The summary is reproduced from the CSV alone, and the learning-rate choice
never reads a test metric.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import study, summary
from tests.training.conftest import REPO

GRID = ["--task", "sst2", "--method", "lora", "--method", "bonly_r8", "--seed", "0", "--seed", "1",
        "--lr", "0.01"]


def _command(results, runs, model, glue, cache):
    sets = {"model": str(model), "data_dir": str(glue), "cache_dir": str(cache), "max_length": 16, "min_bucket": 16,
            "batch_size": 8, "eval_batch_size": 8, "max_steps": 2, "eval_every": 2, "max_eval_examples": -1,
            "model_dropout": 0.0, "lora.dropout": 0.0}
    args = [sys.executable, str(REPO / "experiments" / "reproduce.py"), "--results", str(results), "--runs", str(runs)]
    for key, value in sets.items():
        args += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return args + GRID


def _rows(results):
    return summary.read_rows(str(results / "study.csv"))


@pytest.fixture(scope="module")
def finished_grid(tiny_model, tiny_glue, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    results, runs = root / "results", root / "runs"
    # A persistent compilation cache (the session's, else one here): the runs of one method share their compiled
    # steps, as the study's do.
    env = {"JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           **os.environ, "GLUE_DIR": str(tiny_glue), "JAX_PLATFORMS": "cpu"}
    command = _command(results, runs, tiny_model, tiny_glue, root / "cache")
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not _rows(results) and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # mid-grid: one row written, the next run started or about to
    first.wait()
    assert first.returncode == -signal.SIGKILL, first.stdout.read()
    before = _rows(results)
    assert len(before) >= 1
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return results, before, second.stdout, (command, env)


def test_a_killed_grid_resumes_without_rerunning_a_row(finished_grid):
    results, before, log, _ = finished_grid
    rows = _rows(results)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 4  # lr stage: 2 methods (seed 0); the seed stage adds seed 1 of each
    assert rows[: len(before)] == before  # the rows written before the kill are untouched
    assert "the grid is complete" in log
    assert {(r["method"], r["seed"]) for r in rows if r["stage"] == "seed"} == {("lora", "1"), ("bonly_r8", "1")}
    for row in rows:
        config = json.loads(row["config"])
        assert study.config_hash(config) == row["config_hash"]
        assert config["seed"] == int(row["seed"]) and config["optimizer"]["learning_rate"] == float(row["learning_rate"])
        assert float(row["wall_s"]) > 0 and json.loads(row["versions"])["jax"]
    lora = [r for r in rows if r["method"] == "lora"]
    assert all((results / "adapters" / r["id"] / "adapter_config.json").exists() or
               os.listdir(results / "adapters" / r["id"]) for r in lora)
    energy = json.loads(next(r for r in rows if r["method"] == "bonly_r8")["frame_energy"])
    assert 0 < energy["init"]["in"] < 1 and energy["init"]["in"] == pytest.approx(energy["end"]["in"], abs=0.3)


def test_the_summary_reproduces_from_the_csv_alone(finished_grid, tmp_path):
    results, _, _, _ = finished_grid
    grid = {"tasks": ("sst2",), "lr_tasks": ("sst2",), "methods": ("lora", "bonly_r8"),
            "grids": {m: (0.01,) for m in study.METHODS}}
    copy = tmp_path / "study.csv"
    copy.write_text((results / "study.csv").read_text())  # nothing else next to it
    first, figures = summary.write(str(copy), str(tmp_path / "a"), **grid)
    second, _ = summary.write(str(copy), str(tmp_path / "b"), **grid)
    text = open(first).read()
    assert text == open(second).read().replace(str(tmp_path / "b"), str(tmp_path / "a"))
    assert all(os.path.getsize(f) > 1000 for f in figures)
    report = summary.summarise(summary.read_rows(str(copy)), **grid)
    rows = summary.read_rows(str(copy))
    chosen = report["chosen"]["lora"]
    tests = sorted(float(r["test_metric"]) for r in rows if r["method"] == "lora" and float(r["learning_rate"]) == chosen)
    mean = report["per_cell"][("sst2", "lora")][0]
    assert len(tests) == 2 and mean == pytest.approx(sum(tests) / 2)
    assert f"{100 * mean:.1f}" in text and "inconclusive so far" in text  # 2 seeds < 3


class NoTestMetric(dict):
    """A row that fails the test the moment anything reads its test metric."""

    def __getitem__(self, key):
        if key.startswith("test"):
            raise AssertionError(f"the learning-rate choice read {key!r}")
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


def _stage_rows():
    """Learning-rate-stage rows where the test metric would pick the other rate than validation does."""
    rows = []
    for method, best in (("lora", 1e-3), ("bonly_r8", 3e-4)):
        for task in ("sst2", "mrpc"):
            for lr in (3e-4, 1e-3):
                good = lr == best
                rows.append({"id": f"{task}-{method}-{lr}", "task": task, "method": method, "seed": "0",
                             "learning_rate": str(lr), "validation_metric": str(0.8 if good else 0.7),
                             "test_metric": str(0.6 if good else 0.9)})
    return rows


def test_the_learning_rate_choice_never_reads_test_metrics(finished_grid):
    grids = {m: (3e-4, 1e-3) for m in study.METHODS}
    expected = {"lora": 1e-3, "bonly_r8": 3e-4}
    rows = _stage_rows()
    assert study.choose_learning_rates(rows, ["lora", "bonly_r8"], grids, ["sst2", "mrpc"]) == expected
    guarded = [NoTestMetric(r) for r in rows]  # reading a test metric fails the test
    assert study.choose_learning_rates(guarded, ["lora", "bonly_r8"], grids, ["sst2", "mrpc"]) == expected
    poisoned = [{**r, "test_metric": "nan"} for r in rows]
    assert study.choose_learning_rates(poisoned, ["lora", "bonly_r8"], grids, ["sst2", "mrpc"]) == expected
    # Planning reads no test metric either, and its seed stage runs at the chosen rates.
    planned = study.plan(guarded, lambda run: str(run), methods=("lora", "bonly_r8"), tasks=("sst2", "mrpc"),
                         lr_tasks=("sst2", "mrpc"), seeds=(1,), grids=grids)
    assert {(r.method, r.learning_rate) for r in planned if r.stage == "seed"} == set(expected.items())
    # The real grid's rows too (one rate each: that rate).
    results, _, _, _ = finished_grid
    real = [NoTestMetric(r) for r in _rows(results)]
    assert study.choose_learning_rates(real, ["lora", "bonly_r8"], {m: (0.01,) for m in study.METHODS},
                                       ["sst2"]) == {"lora": 0.01, "bonly_r8": 0.01}


def test_rerun_reproduces_a_recorded_row(finished_grid, monkeypatch, capsys):
    from experiments import reproduce

    results, _, _, (command, env) = finished_grid
    row = _rows(results)[-1]
    monkeypatch.chdir(REPO)  # main() works from the repository root; this restores the cwd afterwards
    monkeypatch.setenv("GLUE_DIR", env["GLUE_DIR"])
    assert reproduce.main(command[2:6] + ["--rerun", row["id"]]) == 0  # in this process: no second start-up
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{row['id']}: recorded test {float(row['test_metric']):.6f}") and line.endswith("the same")
