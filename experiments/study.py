"""The study's grid: which runs exist, in which order they run, and how each method's learning rate is chosen.

A run is ``(task, method, seed, learning rate)``; its config is the method's protocol preset (``configs/glue.py``,
the offline MiniLM-L6 variant) with the study's budget on top (:data:`BUDGET`), the same for every cell.

Two stages, as the issue allows when the budget is short:

1. **learning rate**: every method at each rate of its 3-point grid (:data:`LR_GRIDS`), seed 0, on
   :data:`LR_TASKS` (SST-2 and MRPC); the rate with the best mean *validation* metric over those tasks is the
   method's rate for every task (:func:`choose_learning_rates`: it never reads a test metric);
2. **seeds**: every method at its chosen rate on every task of :data:`TASKS`, seeds :data:`SEEDS` (a stage-1
   run with the same config is the same row, so it is not run twice).

:func:`plan` lists what is still to run given the finished rows, the most informative first: the four methods
the headline claims are about (LoRA, CondLoRA, B-only r=16, A-only r=16), then the rest; within each, the
learning-rate stage (every method's middle rate first, so the first rows already compare the methods), then
seed after seed on SST-2 and MRPC, then STS-B and RTE. The control run of the
asymmetry diagnostic (B-only r=8 with a frame from the LoRA of the same task and seed) waits for that LoRA.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Iterable, Mapping, NamedTuple, Sequence

TASKS = ("sst2", "mrpc", "stsb", "rte")
LR_TASKS = ("sst2", "mrpc")
SEEDS = (0, 1, 2)

# study method -> configs/glue.py argument (each method at its paper's setting; see docs/REPRODUCTION.md).
METHODS = {
    "lora": "method=lora",  # CondLoRA paper's LoRA: r=8, alpha=8, query and value
    "condlora": "method=condlora",  # r=8, alpha=8
    "bonly_r16": "method=bonly,rank=16",  # asymmetry protocol: alpha=32, dropout 0.05 (LoRA r=8's parameters)
    "aonly_r16": "method=aonly,rank=16",
    "bonly_r8": "method=bonly",  # alpha=16, dropout 0.05
    "aonly_r8": "method=aonly",
    "mtlora": "method=mtlora",  # official targets: query, value, intermediate and FFN output dense; alpha=16
    "lora_mtl": "method=lora,protocol=mtlora",  # the fair baseline: LoRA r=8 on MTLoRA's targets and recipe
    "lora_asym": "method=lora,protocol=asymmetry",  # the asymmetry paper's own LoRA (r=8, alpha=16, dropout 0.05)
    "bonly_frame": "method=bonly",  # the control: B-only r=8 whose frozen a spans a trained LoRA's a
}
HEADLINE = ("lora", "condlora", "bonly_r16", "aonly_r16")
BASELINE = "lora"
CONTROL = "bonly_frame"
# One half-decade grid for every method: the asymmetry paper trains LoRA and B-only/A-only at one rate. A lower
# grid for B-only/A-only (1e-4, 3e-4, 1e-3, on the guess that their orthonormal frozen factor at scale 2 makes a
# step about 3x LoRA's) peaked at its top edge on SST-2 (validation 0.822 / 0.832 at 1e-3 against 0.676 / 0.600
# at 3e-4) and left MRPC at the majority class at 3e-4, so it was dropped; its 1e-4 rows stay in the CSV, unused.
_ADAPTER_GRID = (3e-4, 1e-3, 3e-3)
LR_GRIDS = {name: _ADAPTER_GRID for name in METHODS}

# The per-run budget, the same for every cell (docs/REPRODUCTION.md says how it relates to the papers' epochs).
BUDGET = {
    "max_steps": 200,
    "batch_size": 32,
    "max_length": 128,
    "eval_every": 50,
    "max_eval_examples": 500,  # validation: 500 examples of the held-out 10% slice; the test split is whole
    "test_step": "best",  # one selection rule for every method: the best validation step
    "log_every": 25,
    "progress_bar": False,
    "plot": False,
    "checkpoint.keep": 1,
    "checkpoint.async_save": False,
}
# Fields that say where things are on this machine, not what the run is: left out of the config hash.
MACHINE_FIELDS = ("data_dir", "cache_dir", "progress_bar")


class Run(NamedTuple):
    """One cell-seed-rate of the grid; ``frame_from`` is the id of the LoRA row a control run takes its frame from."""

    task: str
    method: str
    seed: int
    learning_rate: float
    stage: str
    frame_from: str = ""


def config_hash(config: Mapping) -> str:
    """sha256 of the canonical JSON of a config dict, without :data:`MACHINE_FIELDS` (16 hex digits).

    >>> config_hash({"task": "sst2", "data_dir": "/here"}) == config_hash({"task": "sst2", "data_dir": "/there"})
    True
    """
    kept = {k: v for k, v in config.items() if k not in MACHINE_FIELDS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Bump when a preset or the budget changes what a run means: the ids change, so old rows no longer count.
STUDY_VERSION = 1


def definition_digest(run: Run, overrides: Mapping) -> str:
    """sha256 (8 hex digits) of what defines a run in this study: the study version, the method's preset
    argument, the budget, the ``--set`` overrides, task, seed, rate and frame.

    Unlike :func:`config_hash` it does not change when the config schema grows a field (another issue's new
    option, at its default), so a later session resumes the same grid.

    >>> definition_digest(Run("sst2", "lora", 0, 1e-3, "lr"), {}) == definition_digest(Run("sst2", "lora", 0, 1e-3, "seed"), {})
    True
    """
    what = {"version": STUDY_VERSION, "preset": METHODS[run.method], "budget": BUDGET, "overrides": dict(overrides),
            "task": run.task, "seed": run.seed, "lr": _rate_key(run.learning_rate), "frame": run.frame_from}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_id(run: Run, digest: str) -> str:
    """``sst2-lora-s0-lr1e-03-<digest>``: readable, and new whenever the run's definition changes.

    >>> run_id(Run("sst2", "lora", 0, 1e-3, "lr"), "0123abcd")
    'sst2-lora-s0-lr1e-03-0123abcd'
    """
    return f"{run.task}-{run.method}-s{run.seed}-lr{run.learning_rate:.0e}-{digest[:8]}"


def choose_learning_rates(rows: Iterable[Mapping], methods: Sequence[str], grids: Mapping[str, Sequence[float]],
                          lr_tasks: Sequence[str], seed: int = 0) -> dict[str, float]:
    """``{method: rate}`` for each method whose learning-rate stage is complete, by the mean validation metric.

    Reads ``task``, ``method``, ``seed``, ``learning_rate`` and ``validation_metric`` of each row, never
    ``test_metric``; a tie goes to the smaller rate.

    >>> rows = [{"task": t, "method": "lora", "seed": 0, "learning_rate": lr, "validation_metric": v}
    ...         for t in ("sst2", "mrpc") for lr, v in ((1e-4, 0.80), (1e-3, 0.85))]
    >>> choose_learning_rates(rows, ["lora"], {"lora": (1e-4, 1e-3)}, ["sst2", "mrpc"])
    {'lora': 0.001}
    """
    scores: dict = {}
    for row in rows:
        key = (row["method"], row["task"], int(row["seed"]), _rate_key(float(row["learning_rate"])))
        scores[key] = float(row["validation_metric"])
    chosen = {}
    for method in methods:
        means = []
        for lr in grids[method]:
            values = [scores.get((method, task, seed, _rate_key(lr))) for task in lr_tasks]
            if any(v is None for v in values):
                break
            means.append((sum(values) / len(values), -lr, lr))
        else:
            if means and all(not math.isnan(m[0]) for m in means):
                chosen[method] = max(means)[2]
    return chosen


def _rate_key(lr: float) -> str:
    return f"{lr:.6g}"


def plan(finished: Sequence[Mapping], ids_of, methods: Sequence[str] = tuple(METHODS), tasks: Sequence[str] = TASKS,
         lr_tasks: Sequence[str] = LR_TASKS, seeds: Sequence[int] = SEEDS,
         grids: Mapping[str, Sequence[float]] = LR_GRIDS) -> list[Run]:
    """The runs still to do, most informative first (see the module docstring).

    ``finished`` are the rows written so far; ``ids_of(run)`` is the row id a run would get. Runs that wait for
    a learning-rate choice (or, for the control, for its LoRA row) are not listed yet.
    """
    done = {row["id"] for row in finished}
    chosen = choose_learning_rates(finished, [m for m in methods if m != CONTROL], grids, lr_tasks)
    lora_rows = {(r["task"], int(r["seed"])): r["id"] for r in finished
                 if r["method"] == BASELINE and BASELINE in chosen
                 and _rate_key(float(r["learning_rate"])) == _rate_key(chosen[BASELINE])}
    if CONTROL in methods and "bonly_r8" in chosen:
        chosen[CONTROL] = chosen["bonly_r8"]  # the control runs at B-only r=8's rate: only the frame differs
    order = {m: i for i, m in enumerate(methods)}
    todo = []
    for method in methods:
        tier = 0 if method in HEADLINE else 1
        if method != CONTROL:
            for task in lr_tasks:
                for lr_rank, lr in enumerate(grids[method]):
                    middle_first = abs(lr_rank - (len(grids[method]) - 1) / 2)  # every method's usual rate first
                    key = (tier, 0, middle_first, lr_tasks.index(task), order[method], lr_rank)
                    todo.append((key, Run(task, method, 0, lr, "lr")))
        if method not in chosen:
            continue
        for seed in seeds:
            for task in tasks:
                run = Run(task, method, seed, chosen[method], "seed")
                if method == CONTROL:
                    if (task, seed) not in lora_rows:
                        continue
                    run = run._replace(frame_from=lora_rows[(task, seed)])
                key = (tier, 1, 0 if task in lr_tasks else 1, seed, order[method], tasks.index(task))
                todo.append((key, run))
    todo.sort(key=lambda item: item[0])
    seen, runs = set(done), []
    for _, run in todo:
        rid = ids_of(run)
        if rid not in seen:
            seen.add(rid)
            runs.append(run)
    return runs


def adapter_dir(results_dir: str, rid: str) -> str:
    """Where a finished LoRA row's adapter is kept (small, committed with the rows, for later analyses)."""
    return os.path.join(results_dir, "adapters", rid)
