"""The study's tables and figures, from the results CSV alone.

* per cell (task x method, at the method's chosen learning rate): the mean ± sd of the test metric over seeds;
* per task, each method's paired difference to LoRA (same seeds), with a 95% t-interval over seeds;
* the average over tasks (cell means, and the paired difference of the per-seed task averages);
* the learning-rate stage (validation metric per rate) and the asymmetry diagnostic (frame energy shares);
* each claim of the papers marked "reproduced", "not reproduced" or "inconclusive so far" (fewer than
  :data:`MIN_SEEDS` seeds in a cell it needs, or an interval that straddles the margin).

Metrics are in points (x 100) in the tables.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Mapping, Sequence

import numpy as np

from experiments import study

MIN_SEEDS = 3
MARGIN = 0.01  # one point: "as good as" means not worse by more than this


def read_rows(path: str) -> list[dict]:
    """The rows of a results CSV (``[]`` when it does not exist yet)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cells(rows: Sequence[Mapping], chosen: Mapping[str, float]) -> dict:
    """``{(task, method): {seed: test_metric}}`` of the runs at each method's chosen learning rate."""
    out: dict = {}
    for row in rows:
        method = row["method"]
        if method not in chosen or not math.isclose(float(row["learning_rate"]), chosen[method], rel_tol=1e-9):
            continue
        out.setdefault((row["task"], method), {})[int(row["seed"])] = float(row["test_metric"])
    return out


def interval(values: Sequence[float]) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)``: the 95% t-interval of the mean (NaN bounds below 2 values).

    >>> [round(v, 4) for v in interval([0.01, 0.02, 0.03])[:3]]
    [0.02, -0.0048, 0.0448]
    """
    from scipy import stats

    values = np.asarray(values, float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def paired(table: Mapping, task: str, method: str, reference: str) -> tuple[float, float, float, int]:
    """The paired difference ``method - reference`` on ``task`` over their common seeds."""
    a, b = table.get((task, method), {}), table.get((task, reference), {})
    seeds = sorted(set(a) & set(b))
    return interval([a[s] - b[s] for s in seeds])


def paired_average(table: Mapping, tasks: Sequence[str], method: str, reference: str):
    """The paired difference of the average over ``tasks``, over the seeds both methods finished on every task."""
    seeds = None
    for task in tasks:
        common = set(table.get((task, method), {})) & set(table.get((task, reference), {}))
        seeds = common if seeds is None else seeds & common
    seeds = sorted(seeds or ())
    diffs = [np.mean([table[(t, method)][s] - table[(t, reference)][s] for t in tasks]) for s in seeds]
    return interval(diffs)


def verdict(result: tuple[float, float, float, int], kind: str, enough: bool) -> str:
    """A claim's mark from its interval: ``kind`` "as_good" (not worse by more than MARGIN) or "better".

    >>> verdict((0.002, -0.004, 0.008, 3), "as_good", True), verdict((0.002, -0.004, 0.008, 2), "as_good", False)
    ('reproduced', 'inconclusive so far')
    """
    mean, low, high, n = result
    if not enough or n < MIN_SEEDS or math.isnan(low):
        return "inconclusive so far"
    floor = -MARGIN if kind == "as_good" else 0.0
    if low > floor:
        return "reproduced"
    if high < floor:
        return "not reproduced"
    return "inconclusive at this scale"


# The papers' claims: (claim, method, reference, kind, the paper's number).
CLAIMS = (
    ("CondLoRA is as good as LoRA (Table 2: avg 83.42 vs 83.38)", "condlora", "lora", "as_good"),
    ("B-only r=16 >= LoRA r=8 at equal parameters (avg 87.5 vs 87.2)", "bonly_r16", "lora", "as_good"),
    ("B-only r=16 >= the asymmetry paper's own LoRA config (r=8, alpha=16)", "bonly_r16", "lora_asym", "as_good"),
    ("B-only is clearly better than A-only (r=16: 87.5 vs 85.9)", "bonly_r16", "aonly_r16", "better"),
    ("B-only is clearly better than A-only (r=8: 87.4 vs 84.2)", "bonly_r8", "aonly_r8", "better"),
    ("MTLoRA beats LoRA on the same targets (about +1 GLUE point)", "mtlora", "lora_mtl", "better"),
    ("Control: LoRA's frame instead of a random one changes B-only r=8", "bonly_frame", "bonly_r8", "better"),
)


def _pts(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _ci(result) -> str:
    mean, low, high, n = result
    if n == 0:
        return "—"
    if math.isnan(low):
        return f"{100 * mean:+.1f} (n={n})"
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] (n={n})"


def summarise(rows: Sequence[Mapping], tasks: Sequence[str] = study.TASKS, methods: Sequence[str] = tuple(study.METHODS),
              lr_tasks: Sequence[str] = study.LR_TASKS, grids: Mapping = study.LR_GRIDS) -> dict:
    """Every number of the report, as plain data (the markdown and the figures are drawn from it)."""
    chosen = study.choose_learning_rates(rows, [m for m in methods if m != study.CONTROL], grids, lr_tasks)
    if "bonly_r8" in chosen:
        chosen[study.CONTROL] = chosen["bonly_r8"]
    table = cells(rows, chosen)
    present = [m for m in methods if any((t, m) in table for t in tasks)]
    per_cell = {key: interval(list(v.values())) for key, v in table.items()}
    sds = {key: float(np.std(list(v.values()), ddof=1)) if len(v) > 1 else math.nan for key, v in table.items()}
    diffs = {(t, m): paired(table, t, m, study.BASELINE) for t in tasks for m in present if m != study.BASELINE}
    complete = [m for m in present if all((t, m) in table for t in tasks)]
    averages = {m: float(np.mean([per_cell[(t, m)][0] for t in tasks])) for m in complete}
    average_diffs = {m: paired_average(table, tasks, m, study.BASELINE) for m in complete if m != study.BASELINE}
    claims = []
    for text, method, reference, kind in CLAIMS:
        result = paired_average(table, tasks, method, reference) if method in complete and reference in complete \
            else (math.nan, math.nan, math.nan, 0)
        enough = all(len(table.get((t, m), {})) >= MIN_SEEDS for t in tasks for m in (method, reference))
        claims.append({"claim": text, "method": method, "reference": reference, "difference": result,
                       "verdict": verdict(result, kind, enough)})
    return {"chosen": chosen, "table": table, "per_cell": per_cell, "sd": sds, "diffs": diffs, "averages": averages,
            "average_diffs": average_diffs, "claims": claims, "tasks": list(tasks), "methods": present,
            "lr_stage": _lr_stage(rows, methods, grids, lr_tasks), "lr_tasks": list(lr_tasks), "energy": _energy(rows, chosen),
            "rows": len(rows), "wall_s": sum(float(r["wall_s"]) for r in rows),
            "row_list": [{k: r[k] for k in ("id", "task", "method", "learning_rate", "seed", "steps", "validation_metric",
                                            "test_metric", "wall_s")} for r in rows]}


def _lr_stage(rows, methods, grids, lr_tasks) -> dict:
    out: dict = {}
    for row in rows:
        if int(row["seed"]) == 0 and row["task"] in lr_tasks and row["method"] in grids:
            out.setdefault(row["method"], {}).setdefault(float(row["learning_rate"]), {})[row["task"]] = \
                float(row["validation_metric"])
    return out


def _energy(rows, chosen) -> dict:
    out: dict = {}
    for row in rows:
        if not row.get("frame_energy") or row["method"] not in chosen:
            continue
        energy = json.loads(row["frame_energy"])
        if not energy:
            continue
        for when in ("init", "end"):
            for side in ("in", "out"):
                value = energy.get(when, {}).get(side)
                if value is not None and not math.isnan(value):
                    out.setdefault((row["method"], f"{when}_{side}"), []).append(value)
        out.setdefault((row["method"], "isotropic"), []).append(energy.get("end", {}).get("isotropic", math.nan))
    return {k: float(np.mean(v)) for k, v in out.items()}


def markdown(report: Mapping, csv_path: str) -> str:
    """The report's tables as markdown (each number from ``csv_path``)."""
    tasks, methods, per_cell, sds = report["tasks"], report["methods"], report["per_cell"], report["sd"]
    lines = [f"Written by `python experiments/reproduce.py --summarise` from `{csv_path}` ({report['rows']} rows, "
             f"{report['wall_s'] / 3600:.1f} h of runs). Test metric x 100 (accuracy; Pearson for STS-B) at each "
             "method's chosen learning rate; mean ± sd over seeds (n).", ""]
    lines += ["### Test metric per cell", "", "| method | lr | " + " | ".join(tasks) + " | average |",
              "|---|---|" + "---|" * (len(tasks) + 1)]
    for m in methods:
        row = [m, f"{report['chosen'].get(m, math.nan):.0e}"]
        for t in tasks:
            mean, _, _, n = per_cell.get((t, m), (math.nan, 0, 0, 0))
            sd = sds.get((t, m), math.nan)
            row.append("—" if n == 0 else f"{_pts(mean)} ± {_pts(sd)} ({n})")
        row.append(_pts(report["averages"].get(m, math.nan)))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "### Paired difference to LoRA (same seeds), mean [95% interval] (n seeds)", "",
              "| method | " + " | ".join(tasks) + " | average over tasks |", "|---|" + "---|" * (len(tasks) + 1)]
    for m in methods:
        if m == study.BASELINE:
            continue
        row = [m] + [_ci(report["diffs"].get((t, m), (math.nan, math.nan, math.nan, 0))) for t in tasks]
        row.append(_ci(report["average_diffs"].get(m, (math.nan, math.nan, math.nan, 0))))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "### The claims", "", "| claim | paired difference, average over tasks | verdict |", "|---|---|---|"]
    for claim in report["claims"]:
        lines.append(f"| {claim['claim']} ({claim['method']} - {claim['reference']}) | {_ci(claim['difference'])} "
                     f"| {claim['verdict']} |")
    lines += ["", "### Learning-rate stage (validation metric x 100, seed 0)", "",
              "| method | lr | " + " | ".join(report["lr_tasks"]) + " | mean | chosen |",
              "|---|---|" + "---|" * (len(report["lr_tasks"]) + 2)]
    for m, by_lr in report["lr_stage"].items():
        for lr in sorted(by_lr):
            values = [by_lr[lr].get(t) for t in report["lr_tasks"]]
            known = [v for v in values if v is not None]
            mean = _pts(float(np.mean(known))) if len(known) == len(values) else "—"
            mark = "yes" if math.isclose(report["chosen"].get(m, -1), lr) else ""
            lines.append(f"| {m} | {lr:.0e} | " + " | ".join(_pts(v) if v is not None else "—" for v in values)
                         + f" | {mean} | {mark} |")
    lines += ["", "### Every finished row (the learning-rate stage included; rates not yet chosen show here only)", "",
              "| id | task | method | lr | seed | steps | validation | test | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in report["row_list"]:
        lines.append(f"| {row['id']} | {row['task']} | {row['method']} | {float(row['learning_rate']):.0e} | {row['seed']} "
                     f"| {row['steps']} | {_pts(float(row['validation_metric']))} | {_pts(float(row['test_metric']))} "
                     f"| {float(row['wall_s']):.0f} |")
    energy = report["energy"]
    if energy:
        lines += ["", "### Asymmetry diagnostic: share of energy in the adapter's frames (mean over matrices and runs)",
                  "", "| method | input share at init | input share at end | output share at init | output share at end "
                  "| r / d_in |", "|---|---|---|---|---|---|"]
        for m in methods:
            vals = [energy.get((m, k), math.nan) for k in ("init_in", "end_in", "init_out", "end_out", "isotropic")]
            if not all(math.isnan(v) for v in vals):
                lines.append(f"| {m} | " + " | ".join("—" if math.isnan(v) else f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def figures(report: Mapping, out_dir: str) -> list[str]:
    """``cells.png`` (mean ± sd per cell) and ``paired.png`` (differences to LoRA with 95% intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, methods = report["tasks"], report["methods"]
    written = []
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        shown = [m for m in methods if (task, m) in report["per_cell"]]
        means = [100 * report["per_cell"][(task, m)][0] for m in shown]
        sds = [100 * np.nan_to_num(report["sd"].get((task, m), math.nan)) for m in shown]
        ax.bar(range(len(shown)), means, yerr=sds, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(shown)), shown, rotation=70, fontsize=7)
        ax.set_title(task)
        if means:
            ax.set_ylim(min(means) - 5, max(means) + 3)
    axes[0][0].set_ylabel("test metric x 100 (mean ± sd)")
    fig.tight_layout()
    path = os.path.join(out_dir, "cells.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7, 3.8))
    others = [m for m in methods if m != study.BASELINE]
    for i, task in enumerate(tasks + ["average"]):
        for j, m in enumerate(others):
            result = report["average_diffs"].get(m) if task == "average" else report["diffs"].get((task, m))
            if not result or result[3] == 0:
                continue
            mean, low, high, _ = result
            x = i + (j - len(others) / 2) * 0.08
            err = None if math.isnan(low) else [[100 * (mean - low)], [100 * (high - mean)]]
            ax.errorbar([x], [100 * mean], yerr=err, fmt="o", ms=3, capsize=2, color=f"C{j}",
                        label=m if i == 0 else None)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(tasks) + 1), tasks + ["average"])
    ax.set_ylabel("difference to LoRA x 100 (95% interval)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = os.path.join(out_dir, "paired.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


START, END = "<!-- summary:start -->", "<!-- summary:end -->"


def _write_text(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write(csv_path: str, out_dir: str, doc: str | None = None, **grid) -> tuple[str, list[str]]:
    """Write ``summary.md`` and the figures into ``out_dir`` from ``csv_path`` alone; return the paths.

    With ``doc``, the text between its :data:`START` and :data:`END` markers is replaced by the same tables.
    """
    os.makedirs(out_dir, exist_ok=True)
    report = summarise(read_rows(csv_path), **grid)
    text = markdown(report, os.path.relpath(csv_path))
    path = os.path.join(out_dir, "summary.md")
    _write_text(path, text)
    if doc and os.path.exists(doc):
        current = open(doc).read()
        if START in current and END in current:
            head, rest = current.split(START, 1)
            _write_text(doc, head + START + "\n" + text + rest[rest.index(END):])
    return path, figures(report, out_dir)
