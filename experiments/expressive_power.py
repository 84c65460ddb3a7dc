"""Reproduce the experiments of Zeng & Lee, "The Expressive Power of Low-Rank Adaptation" (ICLR 2024).

For D = 16 and LoRA ranks 1..16 it compares, by test MSE against a target network,

- "construction": the explicit rank-R updates of :mod:`jaxlora.theory` (float64 numpy), and
- "gradient": LoRA factors (plus biases) trained by Adam with a learning-rate x weight-decay grid,
  the grid point chosen per (rank, seed) by validation MSE (float32 JAX),

with the median over seeds, on these settings (frozen model random or "pretrained", i.e. first
trained in full towards the target until its validation loss is a third of where it started):

    linear       L_bar = 1, L = 2  (deep linear model, no biases)
    fnn_Lbar1    ReLU FNN, L_bar = 1, L = 2
    fnn_Lbar2    ReLU FNN, L_bar = 2, L = 4
    tfn_L1       Transformer network, L = 1 block, H = 2 heads, N = 10 tokens
    tfn_L2       Transformer network, L = 2 blocks

Inputs are N(0, I), fresh every step (batch 256). Every (rank, grid point) run of one seed trains at
once under ``jax.vmap`` (ranks are padded to 16 and masked, which is exactly a rank-R LoRA because the
masked factor entries start at zero and get zero gradient), inside a jitted ``lax.scan``.

Usage:
    python experiments/expressive_power.py --quick --out runs/expressive_quick    # a few minutes on 2 CPU cores
    python experiments/expressive_power.py --out runs/expressive_full              # the paper's full grid (hours)
    python experiments/expressive_power.py --ci --out /tmp/ep                      # smoke run for tests (< 1 min)

Writes ``results.csv`` (one row per setting, seed, rank, method), ``summary.csv`` (median over seeds)
and ``theory_linear.png``, ``theory_fnn.png``, ``theory_tfn.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys
import time
from typing import NamedTuple, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's jaxlora

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from tqdm import tqdm  # noqa: E402

from jaxlora import theory  # noqa: E402


class Setting(NamedTuple):
    """One experimental setting: model family, frozen depth L, target depth L_bar, frozen model kind."""

    name: str
    model: str  # "linear" | "fnn" | "tfn"
    frozen_depth: int
    target_depth: int
    pretrained: bool


def _all_settings() -> tuple:
    base = [("linear", "linear", 2, 1), ("fnn_Lbar1", "fnn", 2, 1), ("fnn_Lbar2", "fnn", 4, 2),
            ("tfn_L1", "tfn", 1, 1), ("tfn_L2", "tfn", 2, 2)]
    return tuple(Setting(name, model, depth, target, pretrained)
                 for pretrained in (False, True) for name, model, depth, target in base)


ALL_SETTINGS = _all_settings()


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that sets the size of a run. ``FULL`` is the paper's protocol."""

    width: int = 16
    ranks: tuple = tuple(range(1, 17))
    seeds: int = 5
    steps: int = 5000
    batch: int = 256
    learning_rates: tuple = (1e-2, 1e-3, 1e-4)
    weight_decays: tuple = (0.0, 1e-4, 1e-3, 1e-2)
    val_samples: int = 1000
    test_samples: int = 5000
    calibration_samples: int = 2000
    heads: int = 2
    tokens: int = 10
    settings: tuple = ALL_SETTINGS
    pretrain_lr: float = 1e-3
    pretrain_max_steps: int = 20000
    chunk: int = 250  # steps per jitted scan call (one progress-bar tick)
    eval_chunk: int = 500
    # TFN training costs ~20x an FNN's on CPU; the quick mode trains TFN LoRA at fewer ranks.
    tfn_ranks: Optional[tuple] = None  # None: the same ranks as the other models
    tfn_batch: Optional[int] = None  # None: the same batch as the other models

    def ranks_for(self, model_kind: str) -> tuple:
        return self.tfn_ranks if (model_kind == "tfn" and self.tfn_ranks) else self.ranks

    def batch_for(self, model_kind: str) -> int:
        return self.tfn_batch if (model_kind == "tfn" and self.tfn_batch) else self.batch


FULL = ExperimentConfig()
QUICK = dataclasses.replace(FULL, seeds=3, steps=1000, learning_rates=(1e-2, 1e-3), weight_decays=(0.0,),
                            test_samples=2000, pretrain_max_steps=5000, tfn_ranks=(1, 4, 7, 8, 12, 16), tfn_batch=64)
CI = dataclasses.replace(FULL, seeds=1, steps=60, ranks=(1, 4, 8, 12, 16), learning_rates=(1e-2,),
                         weight_decays=(0.0,), val_samples=256, test_samples=512, calibration_samples=512,
                         pretrain_max_steps=600, chunk=30, eval_chunk=512,
                         # TFN compiles are the slow part here: keep one TFN setting in the smoke run.
                         settings=tuple(s for s in ALL_SETTINGS if s.model != "tfn" or (s.name == "tfn_L1"
                                                                                        and not s.pretrained)))


# ---------------------------------------------------------------------------------------------
# Models: one definition (numpy float64 for constructions, jax.numpy float32 for training).


def forward(model_kind: str, params, x, xp=np):
    """Output of a linear / FNN / TFN model on a batch (rows for linear/FNN, ``(b, D, N)`` for TFN)."""
    if model_kind == "linear":
        for weight in params:
            x = x @ weight.T
        return x
    if model_kind == "fnn":
        return theory.fnn_forward(params, x, xp=xp)
    return theory.tfn_forward(params, x, xp=xp)


def random_models(setting: Setting, config: ExperimentConfig, rng: np.random.Generator):
    """Frozen and target models with the paper's initialisation (float64 numpy)."""
    d = config.width
    if setting.model == "linear":
        bound = 1.0 / math.sqrt(d)
        make = lambda depth: [rng.uniform(-bound, bound, (d, d)) for _ in range(depth)]  # noqa: E731
        return make(setting.frozen_depth), make(setting.target_depth)
    if setting.model == "fnn":
        return (theory.random_fnn(rng, d, setting.frozen_depth), theory.random_fnn(rng, d, setting.target_depth))
    return (theory.random_tfn(rng, d, setting.frozen_depth, config.heads),
            theory.random_tfn(rng, d, setting.target_depth, config.heads))


def sample_inputs(model_kind: str, config: ExperimentConfig, count: int, key=None, rng=None):
    shape = (count, config.width, config.tokens) if model_kind == "tfn" else (count, config.width)
    if rng is not None:
        return rng.normal(size=shape)
    return jax.random.normal(key, shape, jnp.float32)


def lora_labels(setting: Setting, model) -> list:
    """Per leaf of ``jax.tree.leaves(model)``: "lora" (low-rank update), "bias" (trained), "frozen"."""
    if setting.model == "linear":
        labels = ["lora"] * len(model)
    elif setting.model == "fnn":
        labels = [theory.DenseLayer("lora", "bias") for _ in model]
    else:
        last = len(model.blocks) - 1
        blocks = [theory.TFNBlock("lora", "lora", "lora", "lora", "frozen", "bias",
                                  "lora" if index == last else "frozen", "bias")
                  for index in range(len(model.blocks))]
        labels = theory.TFN(blocks, "lora")
    flat = jax.tree.leaves(labels)
    assert len(flat) == len(jax.tree.leaves(model)), "labels must match the model's leaves"
    return flat


def construct(setting: Setting, frozen, target, rank: int, calibration_inputs):
    """The explicit construction at ``rank``: (adapted model, largest predicted spectral-norm error)."""
    if setting.model == "linear":
        details = theory.linear_construction_details(frozen, theory.chain_product(target), rank)
        return [w + d for w, d in zip(frozen, details.deltas)], details.predicted_error
    if setting.model == "fnn":
        result = theory.fnn_construction(frozen, target, rank, calibration_inputs)
        return result.layers, max(result.group_errors)
    result = theory.tfn_construction(frozen, target, rank)
    return result.model, max(result.product_errors.values())


# ---------------------------------------------------------------------------------------------
# Gradient-trained LoRA: all (rank, grid point) runs of one seed in one vmapped, jitted scan.


class Runs(NamedTuple):
    """Per-run settings, each with a leading run axis."""

    rank_masks: jnp.ndarray  # (runs, max_rank) 1.0 for the active rank slots
    learning_rates: jnp.ndarray
    weight_decays: jnp.ndarray
    ranks: np.ndarray
    grid_index: np.ndarray


def make_runs(config: ExperimentConfig, model_kind: str) -> Runs:
    grid = [(lr, wd) for lr in config.learning_rates for wd in config.weight_decays]
    max_rank = max(config.ranks_for(model_kind))
    ranks, lrs, wds, grid_index = [], [], [], []
    for rank in config.ranks_for(model_kind):
        for index, (lr, wd) in enumerate(grid):
            ranks.append(rank), lrs.append(lr), wds.append(wd), grid_index.append(index)
    masks = (np.arange(max_rank)[None, :] < np.array(ranks)[:, None]).astype(np.float32)
    return Runs(jnp.asarray(masks), jnp.asarray(lrs, jnp.float32), jnp.asarray(wds, jnp.float32),
                np.array(ranks), np.array(grid_index))


def _adapted_leaves(frozen_leaves, labels, trainable, rank_mask):
    leaves = []
    for index, (leaf, label) in enumerate(zip(frozen_leaves, labels)):
        if label == "lora":
            b, a = trainable["lora"][str(index)]
            # Delta W = B A with B (..., D, r) and A (..., r, D); masked slots contribute nothing.
            leaves.append(leaf + (b * rank_mask) @ (a * rank_mask[:, None]))
        elif label == "bias":
            leaves.append(trainable["bias"][str(index)])
        else:
            leaves.append(leaf)
    return leaves


def init_trainable(key, frozen_leaves, labels, rank_mask, width: int):
    """LoRA init: A ~ U(+-1/sqrt(D)) (PyTorch's kaiming_uniform(a=sqrt(5))), B = 0; biases from the frozen model."""
    max_rank = rank_mask.shape[0]
    trainable = {"lora": {}, "bias": {}}
    for index, (leaf, label) in enumerate(zip(frozen_leaves, labels)):
        if label == "lora":
            key, sub = jax.random.split(key)
            batch_shape = leaf.shape[:-2]
            bound = 1.0 / math.sqrt(width)
            a = jax.random.uniform(sub, batch_shape + (max_rank, leaf.shape[-1]), jnp.float32, -bound, bound)
            b = jnp.zeros(batch_shape + (leaf.shape[-2], max_rank), jnp.float32)
            trainable["lora"][str(index)] = (b, a * rank_mask[:, None])
        elif label == "bias":
            trainable["bias"][str(index)] = leaf
    return trainable


_OPTIMIZER = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)


class LoraTrainer(NamedTuple):
    """Jitted functions for one setting's shapes (compiled once, reused for every seed)."""

    init: callable
    train_chunk: callable
    evaluate: callable


def make_lora_trainer(setting: Setting, config: ExperimentConfig, treedef, target_treedef, labels) -> LoraTrainer:
    kind = setting.model

    def model_from(frozen_leaves, trainable, rank_mask):
        return jax.tree.unflatten(treedef, _adapted_leaves(frozen_leaves, labels, trainable, rank_mask))

    def loss_fn(trainable, rank_mask, frozen_leaves, x, y):
        prediction = forward(kind, model_from(frozen_leaves, trainable, rank_mask), x, xp=jnp)
        return jnp.mean((prediction - y) ** 2)

    @jax.jit
    def init(key, frozen_leaves, runs_masks, learning_rates):
        keys = jax.random.split(key, runs_masks.shape[0])

        def one(k, mask, lr):
            trainable = init_trainable(k, frozen_leaves, labels, mask, config.width)
            state = optax.inject_hyperparams(optax.adam)(learning_rate=lr).init(trainable)
            return trainable, state

        return jax.vmap(one)(keys, runs_masks, learning_rates)

    @jax.jit
    def train_chunk(carry, start, data_key, frozen_leaves, target_leaves, runs_masks, weight_decays):
        target_model = jax.tree.unflatten(target_treedef, target_leaves)

        def step(carry, step_index):
            trainable, state = carry
            x = sample_inputs(kind, config, config.batch_for(kind), key=jax.random.fold_in(data_key, step_index))
            y = forward(kind, target_model, x, xp=jnp)

            def one(trainable, state, mask, weight_decay):
                loss, grads = jax.value_and_grad(loss_fn)(trainable, mask, frozen_leaves, x, y)
                # PyTorch Adam's weight_decay: an L2 term added to the gradient (the paper's optimiser).
                grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, trainable)
                updates, state = _OPTIMIZER.update(grads, state, trainable)
                return optax.apply_updates(trainable, updates), state, loss

            trainable, state, loss = jax.vmap(one)(trainable, state, runs_masks, weight_decays)
            return (trainable, state), loss

        return jax.lax.scan(step, carry, start + jnp.arange(config.chunk))

    @jax.jit
    def evaluate(trainable, frozen_leaves, runs_masks, x, y):
        def one(trainable, mask):
            return loss_fn(trainable, mask, frozen_leaves, x, y)

        return jax.vmap(one)(trainable, runs_masks)

    return LoraTrainer(init, train_chunk, evaluate)


def _chunked_mse(evaluate, trainable, frozen_leaves, masks, x, y, chunk):
    total = None
    for start in range(0, x.shape[0], chunk):
        xs, ys = jnp.asarray(x[start:start + chunk], jnp.float32), jnp.asarray(y[start:start + chunk], jnp.float32)
        part = np.asarray(evaluate(trainable, frozen_leaves, masks, xs, ys), np.float64) * xs.shape[0]
        total = part if total is None else total + part
    return total / x.shape[0]


# ---------------------------------------------------------------------------------------------
# "Pretrained" frozen models: full training towards the target until the loss is a third.


def pretrain(setting: Setting, config: ExperimentConfig, frozen, target, val_x, val_y, seed: int):
    kind = setting.model
    leaves, treedef = jax.tree.flatten(frozen)
    params = [jnp.asarray(leaf, jnp.float32) for leaf in leaves]
    target_leaves = [jnp.asarray(leaf, jnp.float32) for leaf in jax.tree.leaves(target)]
    target_model = target_leaves if kind == "linear" else jax.tree.unflatten(jax.tree.structure(target), target_leaves)
    optimizer = optax.adam(config.pretrain_lr)
    interval = 50

    def loss_fn(params, x, y):
        return jnp.mean((forward(kind, jax.tree.unflatten(treedef, params), x, xp=jnp) - y) ** 2)

    @jax.jit
    def train(params, state, start, key):
        def step(carry, index):
            params, state = carry
            x = sample_inputs(kind, config, config.batch_for(kind), key=jax.random.fold_in(key, index))
            grads = jax.grad(loss_fn)(params, x, forward(kind, target_model, x, xp=jnp))
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, state), start + jnp.arange(interval))[0]

    val_x32, val_y32 = jnp.asarray(val_x, jnp.float32), jnp.asarray(val_y, jnp.float32)
    start_loss = float(loss_fn(params, val_x32, val_y32))
    state, key, steps, loss = optimizer.init(params), jax.random.PRNGKey(10_000 + seed), 0, start_loss
    while loss > start_loss / 3.0 and steps < config.pretrain_max_steps:
        params, state = train(params, state, steps, key)
        steps += interval
        loss = float(loss_fn(params, val_x32, val_y32))
    if loss > start_loss / 3.0:
        print(f"[pretrain] {setting.name} seed {seed}: loss {loss:.3g} did not reach a third of {start_loss:.3g} "
              f"in {steps} steps; using the partly trained model.", file=sys.stderr)
    pretrained = jax.tree.unflatten(treedef, [np.asarray(p, np.float64) for p in params])
    return pretrained, {"pretrain_steps": steps, "pretrain_start": start_loss, "pretrain_end": loss}


# ---------------------------------------------------------------------------------------------


def run_setting_seed(setting, config, seed, trainers, progress) -> list:
    rng = np.random.default_rng(seed)
    frozen, target = random_models(setting, config, rng)
    kind = setting.model
    val_x = sample_inputs(kind, config, config.val_samples, rng=rng)
    test_x = sample_inputs(kind, config, config.test_samples, rng=rng)
    calibration_x = sample_inputs(kind, config, config.calibration_samples, rng=rng) if kind == "fnn" else None
    val_y, test_y = forward(kind, target, val_x), forward(kind, target, test_x)
    info = {}
    if setting.pretrained:
        frozen, info = pretrain(setting, config, frozen, target, val_x, val_y, seed)
    frozen_test_mse = float(np.mean((forward(kind, frozen, test_x) - test_y) ** 2))

    base = {"setting": setting.name, "model": kind, "frozen": "pretrained" if setting.pretrained else "random",
            "L": setting.frozen_depth, "L_bar": setting.target_depth, "seed": seed,
            "frozen_test_mse": frozen_test_mse, **info}
    rows = []
    for rank in config.ranks:
        adapted, predicted = construct(setting, frozen, target, rank, calibration_x)
        mse = float(np.mean((forward(kind, adapted, test_x) - test_y) ** 2))
        rows.append({**base, "rank": rank, "method": "construction", "test_mse": mse, "val_mse": "",
                     "predicted_error": predicted, "lr": "", "weight_decay": ""})

    leaves, treedef = jax.tree.flatten(frozen)
    key = (setting.model, setting.frozen_depth, setting.target_depth)
    if key not in trainers:
        trainers[key] = make_lora_trainer(setting, config, treedef, jax.tree.structure(target),
                                          lora_labels(setting, frozen))
    trainer = trainers[key]
    runs = make_runs(config, kind)
    frozen_leaves = [jnp.asarray(leaf, jnp.float32) for leaf in leaves]
    target_leaves = [jnp.asarray(leaf, jnp.float32) for leaf in jax.tree.leaves(target)]
    carry = trainer.init(jax.random.PRNGKey(seed), frozen_leaves, runs.rank_masks, runs.learning_rates)
    data_key = jax.random.PRNGKey(1_000_000 + seed)
    for start in range(0, config.steps, config.chunk):
        carry, _ = trainer.train_chunk(carry, start, data_key, frozen_leaves, target_leaves,
                                       runs.rank_masks, runs.weight_decays)
        progress.update(1)
    trainable = carry[0]
    val_mse = _chunked_mse(trainer.evaluate, trainable, frozen_leaves, runs.rank_masks, val_x, val_y, config.eval_chunk)
    test_mse = _chunked_mse(trainer.evaluate, trainable, frozen_leaves, runs.rank_masks, test_x, test_y,
                            config.eval_chunk)
    grid = [(lr, wd) for lr in config.learning_rates for wd in config.weight_decays]
    for rank in config.ranks_for(kind):
        candidates = np.flatnonzero(runs.ranks == rank)
        scores = np.where(np.isfinite(val_mse[candidates]), val_mse[candidates], np.inf)
        best = candidates[int(np.argmin(scores))]
        lr, wd = grid[runs.grid_index[best]]
        rows.append({**base, "rank": rank, "method": "gradient", "test_mse": float(test_mse[best]),
                     "val_mse": float(val_mse[best]), "predicted_error": "", "lr": lr, "weight_decay": wd})
    return rows


FIELDS = ["setting", "model", "frozen", "L", "L_bar", "seed", "rank", "method", "test_mse", "val_mse",
          "predicted_error", "lr", "weight_decay", "frozen_test_mse", "pretrain_steps", "pretrain_start",
          "pretrain_end"]


def summarise(rows: Sequence[dict]) -> list:
    """Median over seeds of the test MSE per (setting, frozen, rank, method)."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["setting"], row["frozen"], row["rank"], row["method"]), []).append(row["test_mse"])
    return [{"setting": s, "frozen": f, "rank": r, "method": m, "median_test_mse": float(np.median(v)),
             "min_test_mse": float(np.min(v)), "max_test_mse": float(np.max(v)), "seeds": len(v)}
            for (s, f, r, m), v in sorted(groups.items())]


def _write_csv(path, rows, fields):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


FLOOR = 1e-16  # float64 round-off: smaller MSEs are drawn at this value on the log axis


def plot(summary: Sequence[dict], out_dir: str, tag: str = "") -> list:
    """One PNG per model family: test MSE (median over seeds) against rank, construction vs gradient."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = {"linear": ["linear"], "fnn": ["fnn_Lbar1", "fnn_Lbar2"], "tfn": ["tfn_L1", "tfn_L2"]}
    titles = {"linear": "linear, L_bar=1, L=2", "fnn_Lbar1": "ReLU FNN, L_bar=1, L=2",
              "fnn_Lbar2": "ReLU FNN, L_bar=2, L=4", "tfn_L1": "TFN, L=1", "tfn_L2": "TFN, L=2"}
    paths = []
    present = {row["setting"] for row in summary}
    for family, names in families.items():
        names = [n for n in names if n in present]
        if not names:
            continue
        fig, axes = plt.subplots(len(names), 2, figsize=(9, 3.2 * len(names)), squeeze=False)
        for row_index, name in enumerate(names):
            for col, frozen in enumerate(("random", "pretrained")):
                axis = axes[row_index][col]
                for method, style in (("gradient", "o-"), ("construction", "s--")):
                    points = sorted((r["rank"], r["median_test_mse"]) for r in summary
                                    if r["setting"] == name and r["frozen"] == frozen and r["method"] == method)
                    if points:
                        ranks, values = zip(*points)
                        axis.plot(ranks, np.maximum(values, FLOOR), style, label=f"{method}", markersize=4)
                axis.set_yscale("log")
                axis.set_title(f"{titles[name]}, {frozen} frozen", fontsize=9)
                axis.set_xlabel("LoRA rank R")
                axis.set_ylabel("test MSE (median)")
                axis.grid(True, alpha=0.3)
                axis.legend(fontsize=8)
        fig.suptitle(f"Expressive power of LoRA (D=16){tag}; MSE < {FLOOR:g} drawn at {FLOOR:g}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, f"theory_{family}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def run(config: ExperimentConfig, out_dir: str, tag: str = "", show_progress: bool = True) -> list:
    """Runs every setting and seed of ``config``; writes CSVs and plots into ``out_dir``; returns the rows."""
    os.makedirs(out_dir, exist_ok=True)
    chunks = math.ceil(config.steps / config.chunk)
    total = len(config.settings) * config.seeds * chunks
    trainers: dict = {}
    rows = []
    started = time.time()
    with tqdm(total=total, desc="expressive power", unit="chunk", disable=not show_progress) as progress:
        for setting in config.settings:
            for seed in range(config.seeds):
                progress.set_postfix_str(f"{setting.name}/{'pre' if setting.pretrained else 'rand'} seed {seed}")
                rows.extend(run_setting_seed(setting, config, seed, trainers, progress))
                _write_csv(os.path.join(out_dir, "results.csv"), rows, FIELDS)
    summary = summarise(rows)
    _write_csv(os.path.join(out_dir, "summary.csv"), summary, list(summary[0].keys()))
    plot(summary, out_dir, tag)
    with open(os.path.join(out_dir, "config.txt"), "w") as handle:
        handle.write(f"{config}\nwall time: {time.time() - started:.1f} s\n")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="3 seeds, 1000 steps, lr {1e-2,1e-3}, wd 0; TFN LoRA at 6 ranks with batch 64 (minutes)")
    mode.add_argument("--ci", action="store_true", help="tiny smoke run for the test suite (< 1 minute)")
    parser.add_argument("--out", default="runs/expressive_power", help="output directory")
    parser.add_argument("--settings", default="", help="comma-separated setting names (default: all of the mode)")
    parser.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    parser.add_argument("--steps", type=int, default=None, help="override the number of Adam steps")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bar")
    args = parser.parse_args(argv)

    config, tag = (QUICK, " [quick]") if args.quick else (CI, " [ci]") if args.ci else (FULL, "")
    if args.settings:
        wanted = [name.strip() for name in args.settings.split(",") if name.strip()]
        known = sorted({s.name for s in ALL_SETTINGS})
        unknown = [name for name in wanted if name not in known]
        if unknown:
            parser.error(f"unknown setting(s) {unknown}; choose from {known}")
        config = dataclasses.replace(config, settings=tuple(s for s in ALL_SETTINGS if s.name in wanted))
    if args.seeds is not None:
        config = dataclasses.replace(config, seeds=args.seeds)
    if args.steps is not None:
        config = dataclasses.replace(config, steps=args.steps)
    rows = run(config, args.out, tag, show_progress=not args.no_progress)
    summary = summarise(rows)
    for row in summary:
        if row["rank"] in (1, 4, 8, 16):
            print(f"{row['setting']:10s} {row['frozen']:10s} R={row['rank']:2d} {row['method']:12s} "
                  f"median test MSE {row['median_test_mse']:.3e}")
    print(f"wrote {os.path.join(args.out, 'results.csv')}, summary.csv and plots")


if __name__ == "__main__":
    main()
