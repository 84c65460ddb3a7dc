"""The study runner: a grid of task x method x seed x learning rate, one run at a time, one CSV row per run.

    nohup nice -n 19 python experiments/reproduce.py > runs/study.log 2>&1 &    # run (or continue) the grid
    python experiments/reproduce.py --summarise                                  # tables + figures from the CSV
    python experiments/reproduce.py --rerun sst2-lora-s0-lr1e-03-0123abcd        # one row again, new vs recorded
    python experiments/reproduce.py --plan                                       # what would run next

Every run goes through :func:`jaxlora.training.train` (what ``train.py`` calls) with the method's protocol
preset and the study's budget (:mod:`experiments.study`). A row is appended to ``<results>/study.csv`` only
when its run has finished, by writing the whole file anew and renaming it over the old one, so a kill never
leaves half a row; finished rows are never rerun (the plan skips their ids), and a run killed midway resumes
from its last checkpoint in ``<runs>/<id>``. Ids come from the run's definition in the study
(:func:`experiments.study.definition_digest`), so a config field added later does not orphan finished rows;
each row still records the hash of its full config. Each row holds the full config as JSON, its hash, the versions,
the wall time and the asymmetry diagnostic; finished LoRA rows keep their adapter in ``<results>/adapters/<id>``.

The learning rate of each method is chosen from the validation metrics of its learning-rate stage
(:func:`experiments.study.choose_learning_rates`), never from a test metric.

``--task/--method/--seed/--lr`` narrow the grid and ``--set field=value`` changes config fields (the tests run
a 2 x 2 grid on a tiny model this way); both change the ids, so they never mix with the study's rows.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: the repository root holds configs/ and experiments/
    sys.path.insert(0, REPO)

from experiments import frame_energy, study, summary  # noqa: E402  (frame_energy registers bonly_frame)

COLUMNS = ("id", "stage", "task", "method", "seed", "learning_rate", "steps", "total_steps", "best_step",
           "metric_name", "validation_metric", "test_metric", "test_metrics", "trainable_params", "wall_s",
           "examples_per_s", "stopped_early", "resumed", "frame_from", "frame_energy", "config_hash", "versions",
           "finished_at", "host", "config")
DEFAULT_RESULTS = os.path.join(REPO, "experiments", "results")
DEFAULT_RUNS = os.path.join(REPO, "runs", "study")


# ----------------------------------------------------------------------------------------------
# Configs


def parse_value(text: str):
    """``--set`` values: JSON when it parses (numbers, true/false, lists), else the string itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return tuple(value) if isinstance(value, list) else value


def make_config(run: study.Run, overrides: dict, results_dir: str):
    """The config of one run: the method's offline preset, the study budget, the run's seed and rate."""
    from configs import glue

    config = glue.get_config(f"{study.METHODS[run.method]},task={run.task},offline")
    config.update_from_flattened_dict(dict(study.BUDGET))
    config.seed = int(run.seed)
    config.optimizer.learning_rate = float(run.learning_rate)
    if run.method == study.CONTROL:
        config.lora.variant = "bonly_frame"
        config.lora.bonly_frame.frame = os.path.relpath(study.adapter_dir(results_dir, run.frame_from), REPO)
    config.update_from_flattened_dict(dict(overrides))
    return config


def config_from_json(document: dict):
    """A locked training config equal to a recorded one (the ``config`` column)."""
    import ml_collections

    from jaxlora.training import config as config_lib

    def assign(node, values, path=()):
        for key, value in values.items():
            if isinstance(value, dict) and path + (key,) != ("optimizer", "task_learning_rates"):
                assign(node[key], value, path + (key,))
            elif isinstance(value, dict):
                node[key] = ml_collections.ConfigDict(value)
            else:
                node[key] = tuple(value) if isinstance(value, list) else value

    config = config_lib.default_config()
    assign(config, document)
    return config


def run_identity(run: study.Run, overrides: dict, results_dir: str) -> tuple[str, str, dict]:
    """``(id, config hash, config dict)`` of a run."""
    from jaxlora.training import config as config_lib

    document = config_lib.to_dict(make_config(run, overrides, results_dir))
    return study.run_id(run, study.definition_digest(run, overrides)), study.config_hash(document), document


# ----------------------------------------------------------------------------------------------
# Rows


def append_row(path: str, row: dict) -> None:
    """Add ``row`` to the CSV at ``path`` atomically: the new file is complete before it replaces the old."""
    rows = summary.read_rows(path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for old in rows + [row]:
        writer.writerow({k: old.get(k, "") for k in COLUMNS})
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_VERSIONS: dict = {}


def versions() -> dict:
    """The versions this process runs: read once, so a checkout moving under a long grid is not recorded."""
    if not _VERSIONS:
        _VERSIONS.update(_read_versions())
    return dict(_VERSIONS)


def _read_versions() -> dict:
    import flax
    import jax
    import numpy
    import optax

    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"jaxlora": commit, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


# ----------------------------------------------------------------------------------------------
# One run


def diagnose(config, workdir: str, eval_examples: int = 128) -> dict:
    """The frame energy shares of a finished run at initialisation and at the end (means over matrices)."""
    import jax

    import jaxlora
    from jaxlora import interop, training

    if config.lora.variant == training.FULL_VARIANT or not os.path.isdir(os.path.join(workdir, "adapter")):
        return {}
    run = training.build(config)
    start = jaxlora.Adapter(jax.device_get(run.initial_state.trainable), jax.device_get(run.initial_state.fixed))
    final, final_config, _ = interop.load_adapter(os.path.join(workdir, "adapter"))
    data = run.validation_data
    batches = []
    for batch, rows in run.task.eval_batches(data, int(config.eval_batch_size)):
        batches.append(batch)
        if sum(len(b["input_ids"]) for b in batches) >= eval_examples:
            break
    result = {}
    for when, adapter, cfg in (("init", start, run.adapter_config), ("end", final, final_config)):
        shares = frame_energy.frame_shares(run.module, run.frozen_host, adapter, cfg, batches)
        result[when] = frame_energy.summarise(shares)
        result[f"{when}_per_matrix"] = {k: {s: round(v, 5) for s, v in d.items()} for k, d in shares.items()}
    return result


def run_one(run: study.Run, rid: str, digest: str, overrides: dict, results_dir: str, runs_dir: str,
            workdir: str | None = None) -> dict:
    """Train one run and return its row (not yet written)."""
    from jaxlora import training

    config = make_config(run, overrides, results_dir)
    workdir = workdir or os.path.join(runs_dir, rid)
    checkpoints = os.path.join(workdir, "checkpoints")
    resumed = os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))
    start = time.time()
    results = training.train(config, workdir)
    wall = time.time() - start
    try:
        energy = diagnose(config, workdir)
    except Exception as err:  # the diagnostic must never cost a finished run its row
        energy = {"error": f"{type(err).__name__}: {err}"}
    if run.method == study.BASELINE and os.path.isdir(os.path.join(workdir, "adapter")):
        target = study.adapter_dir(results_dir, rid)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(os.path.join(workdir, "adapter"), target)
    return {
        "id": rid, "stage": run.stage, "task": run.task, "method": run.method, "seed": run.seed,
        "learning_rate": run.learning_rate, "steps": results["steps"], "total_steps": results["total_steps"],
        "best_step": results["best_step"], "metric_name": results["metric_name"],
        "validation_metric": results["best_validation_metric"], "test_metric": results["test_metric"],
        "test_metrics": json.dumps(results["test_metrics"]), "trainable_params": results["trainable_params"],
        "wall_s": round(wall, 1), "examples_per_s": round(float(results.get("train_examples_per_s") or 0), 2),
        "stopped_early": results.get("stopped_early", False), "resumed": resumed, "frame_from": run.frame_from,
        "frame_energy": json.dumps(energy), "config_hash": digest, "versions": json.dumps(versions()),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(),
        "config": json.dumps(results["config"], sort_keys=True),
    }


# ----------------------------------------------------------------------------------------------
# The grid


def grid_options(args) -> dict:
    grid = {}
    if args.task:
        grid["tasks"] = tuple(args.task)
        grid["lr_tasks"] = tuple(t for t in study.LR_TASKS if t in args.task) or tuple(args.task[:1])
    if args.method:
        grid["methods"] = tuple(args.method)
    if args.seed:
        grid["seeds"] = tuple(args.seed)
    if args.lr:
        grid["grids"] = {m: tuple(args.lr) for m in study.METHODS}
    return grid


def run_grid(args, overrides: dict) -> int:
    csv_path = os.path.join(args.results, "study.csv")
    os.makedirs(args.results, exist_ok=True)
    grid = grid_options(args)
    done_here = 0
    ids: dict = {}
    print(f"[grid] versions {json.dumps(versions())}", flush=True)

    def ids_of(run):
        if run not in ids:
            ids[run] = run_identity(run, overrides, args.results)[:2]
        return ids[run][0]

    failed: set = set()
    while True:
        rows = summary.read_rows(csv_path)
        todo = [run for run in study.plan(rows, ids_of, **grid) if ids_of(run) not in failed]
        if not todo or (args.max_runs and done_here >= args.max_runs):
            print(f"[grid] {len(rows)} rows in {csv_path}; {len(todo)} runs planned now"
                  + ("" if todo else ": the grid is complete (or waits for nothing)")
                  + (f"; {len(failed)} failed (see failures.jsonl)" if failed else ""), flush=True)
            return 1 if failed else 0
        run = todo[0]
        rid, digest = ids[run]
        mean_wall = sum(float(r["wall_s"]) for r in rows) / len(rows) if rows else float("nan")
        print(f"[grid] {time.strftime('%H:%M:%S')} run {len(rows) + 1} ({len(todo)} planned, ~{mean_wall:.0f} s each "
              f"so far): {rid}", flush=True)
        try:
            row = run_one(run, rid, digest, overrides, args.results, args.runs)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # one broken run must not stop the grid: logged, no row, retried next start
            failed.add(rid)
            _log_failure(args.results, rid, err)
            print(f"[grid] FAILED {rid}: {type(err).__name__}: {err} (no row; retried when the grid restarts)",
                  flush=True)
            continue
        append_row(csv_path, row)
        done_here += 1
        print(f"[grid] done {rid}: validation {float(row['validation_metric']):.4f} test "
              f"{float(row['test_metric']):.4f} in {row['wall_s']} s", flush=True)


def _log_failure(results_dir: str, rid: str, err: Exception) -> None:
    import traceback

    with open(os.path.join(results_dir, "failures.jsonl"), "a") as f:
        f.write(json.dumps({"id": rid, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "error": f"{type(err).__name__}: {err}",
                            "traceback": traceback.format_exc()[-4000:]}) + "\n")


def rerun(args) -> int:
    csv_path = os.path.join(args.results, "study.csv")
    rows = {r["id"]: r for r in summary.read_rows(csv_path)}
    if args.rerun not in rows:
        print(f"No row {args.rerun!r} in {csv_path}; it has {len(rows)} rows (e.g. {sorted(rows)[:3]}).",
              file=sys.stderr)
        return 2
    row = rows[args.rerun]
    from jaxlora import training

    config = config_from_json(json.loads(row["config"]))
    workdir = os.path.join(args.runs, "rerun", f"{row['id']}-{time.strftime('%Y%m%d-%H%M%S')}")
    start = time.time()
    results = training.train(config, workdir)
    print(f"{row['id']}: recorded test {float(row['test_metric']):.6f} validation "
          f"{float(row['validation_metric']):.6f} ({row['wall_s']} s); new test {results['test_metric']:.6f} "
          f"validation {results['best_validation_metric']:.6f} ({time.time() - start:.1f} s); "
          f"{'the same' if abs(results['test_metric'] - float(row['test_metric'])) < 1e-6 else 'DIFFERENT'}",
          flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="folder of study.csv and the kept adapters")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="folder of the runs' workdirs (checkpoints)")
    parser.add_argument("--summarise", action="store_true", help="write the tables and figures from the CSV alone")
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "reproduction"), help="--summarise's folder")
    parser.add_argument("--doc", default=os.path.join(REPO, "docs", "REPRODUCTION.md"),
                        help="--summarise also rewrites this file's summary block ('none': no file)")
    parser.add_argument("--rerun", metavar="ID", help="rerun one recorded row from its recorded config")
    parser.add_argument("--plan", action="store_true", help="list the runs the grid would do next")
    parser.add_argument("--task", action="append", help="only these tasks (repeat)")
    parser.add_argument("--method", action="append", choices=sorted(study.METHODS), help="only these methods")
    parser.add_argument("--seed", action="append", type=int, help="only these seeds")
    parser.add_argument("--lr", action="append", type=float, help="this learning-rate grid for every method")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a config field")
    parser.add_argument("--max-runs", type=int, default=0, help="stop after this many runs (0: the whole grid)")
    args = parser.parse_args(argv)
    args.results, args.runs = os.path.abspath(args.results), os.path.abspath(args.runs)
    overrides = {}
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: use FIELD=VALUE, e.g. --set max_steps=100")
        overrides[field] = parse_value(value)
    os.chdir(REPO)  # recorded paths (the control's frame) are relative to the repository
    if args.summarise:
        doc = args.doc if args.doc != "none" else None
        path, figures = summary.write(os.path.join(args.results, "study.csv"), args.out, doc=doc,
                                      **{k: v for k, v in grid_options(args).items() if k != "seeds"})
        print("\n".join([path] + figures))
        return 0
    if args.rerun:
        return rerun(args)
    if args.plan:
        rows = summary.read_rows(os.path.join(args.results, "study.csv"))
        for run in study.plan(rows, lambda r: run_identity(r, overrides, args.results)[0], **grid_options(args)):
            print(run)
        return 0
    return run_grid(args, overrides)


if __name__ == "__main__":
    sys.exit(main())
