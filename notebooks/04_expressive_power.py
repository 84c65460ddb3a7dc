# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # LoRA's expressive power: Zeng & Lee's construction against gradient-trained LoRA
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxlora/jaxlora/blob/main/notebooks/04_expressive_power.ipynb)
#
# Zeng & Lee (*The Expressive Power of Low-Rank Adaptation*, ICLR 2024) show that rank-`R` LoRA
# on every layer of a frozen `L`-layer network can turn it into a target network exactly once
# `R >= D / L` (linear models; for ReLU networks once `R` reaches the rank threshold of each layer
# group), and below that the error of their explicit construction is the `(R L + 1)`-th singular value
# of the error matrix `E = W_target - W_L ... W_1`.
#
# This notebook puts the construction (`jaxlora.theory`, float64) next to LoRA trained by gradient
# descent with the library itself (`jaxlora.init` / `jaxlora.apply`, float32, Adam), for a deep linear
# model and a ReLU network (width `D = 16`, frozen depth `L = 2`, target depth 1), and plots the
# test MSE against the rank. The full grid of the paper (five settings, pretrained frozen models, a
# learning-rate search) is `experiments/expressive_power.py` in the repository.

# %%
# Colab: install jaxlora from GitHub. Where it is importable already (a checkout, pip install -e .) this does nothing.
import importlib.util, subprocess, sys  # noqa: E401

if importlib.util.find_spec("jaxlora") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "jaxlora[theory] @ git+https://github.com/jaxlora/jaxlora"], check=True)

# %% tags=["parameters"]
SMOKE = False  # True: a CI-sized run (CI sets it with papermill -p SMOKE True)
WIDTH = 16  # D
FROZEN_DEPTH = 2  # L
RANKS = tuple(range(1, 17))
SEEDS = 3  # frozen/target pairs; the plot shows the median
STEPS = 3000  # Adam steps of gradient-trained LoRA
BATCH = 256  # fresh N(0, I) inputs every step
LEARNING_RATE = 1e-2
TEST_SAMPLES = 5000

# %%
if SMOKE:
    RANKS, SEEDS, STEPS, TEST_SAMPLES = (1, 4, 8, 16), 1, 150, 1000
print(f"D={WIDTH}, L={FROZEN_DEPTH}, ranks {RANKS}, {SEEDS} seed(s), {STEPS} Adam steps of batch {BATCH}"
      + (" (SMOKE run)" if SMOKE else ""))

# %% [markdown]
# The devices JAX found: this notebook needs no TPU: the models are tiny.

# %%
import jax

print(f"{jax.device_count()} {jax.default_backend()} device(s): {jax.devices()[0].device_kind}")
if jax.default_backend() != "tpu":
    print("No TPU found: in Colab choose Runtime > Change runtime type > TPU, then rerun (this run goes on, slower).")

# %% [markdown]
# ## The models
#
# Both use the paper's column-vector convention, `f(x) = W_L ... W_1 x` (linear) and
# `f(x) = W_L relu(... relu(W_1 x + b_1) ...) + b_L` (ReLU FNN), with PyTorch's default init
# `U(+-1/sqrt(D))`. For gradient training the same weights become a Flax-style parameter tree,
# `{"layer_i": {"kernel": W_i.T, "bias": b_i}}`, which is all `jaxlora` needs to find its targets.

# %%
import math

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import jaxlora
from jaxlora import theory


def random_models(kind, rng):
    """(frozen, target): FROZEN_DEPTH frozen layers and a one-layer target, as theory.DenseLayer lists."""
    if kind == "fnn":
        return theory.random_fnn(rng, WIDTH, FROZEN_DEPTH), theory.random_fnn(rng, WIDTH, 1)
    bound = 1.0 / math.sqrt(WIDTH)
    layer = lambda: theory.DenseLayer(rng.uniform(-bound, bound, (WIDTH, WIDTH)), np.zeros(WIDTH))  # noqa: E731
    return [layer() for _ in range(FROZEN_DEPTH)], [layer()]


def forward(kind, layers, x, xp=np):
    """Rows of x through the model (ReLU between layers for "fnn", a plain matrix chain for "linear")."""
    if kind == "fnn":
        return theory.fnn_forward(layers, x, xp=xp)
    for layer in layers:
        x = x @ layer.weight.T
    return x


def construction_mse(kind, frozen, target, rank, x_test, y_test, x_calibration):
    """Test MSE of the explicit rank-`rank` construction, and its predicted spectral-norm error."""
    if kind == "fnn":
        result = theory.fnn_construction(frozen, target, rank, x_calibration)
        adapted, predicted = result.layers, max(result.group_errors)
    else:
        details = theory.linear_construction_details([l.weight for l in frozen], target[0].weight, rank)
        adapted = [theory.DenseLayer(l.weight + d, l.bias) for l, d in zip(frozen, details.deltas)]
        predicted = details.predicted_error
    return float(np.mean((forward(kind, adapted, x_test) - y_test) ** 2)), float(predicted)


# %% [markdown]
# ## Gradient-trained LoRA, with the library
#
# `jaxlora.init` makes the LoRA factors of every kernel (`A` random, `B = 0`); for the ReLU network the
# biases train in full too (`trainable=("bias",)`), as in the paper. `jaxlora.apply(..., mode="merged")`
# gives plain weights `W + (alpha / r) A B` to run the model with, and `jax.grad` differentiates the
# adapter only. One jitted `lax.scan` runs all the steps.

# %%
def lora_mse(kind, frozen, target, rank, x_test, y_test, seed):
    """Test MSE of rank-`rank` LoRA trained by Adam towards the target (fresh Gaussian batches)."""
    params = {f"layer_{i}": {"kernel": jnp.asarray(l.weight.T, jnp.float32), "bias": jnp.asarray(l.bias, jnp.float32)}
              for i, l in enumerate(frozen)}
    config = jaxlora.AdapterConfig("lora", rank=rank, alpha=rank, targets="all-linear",
                                   trainable=("bias",) if kind == "fnn" else ())
    adapter = jaxlora.init(jax.random.key(seed), params, config)
    target_layers = [theory.DenseLayer(jnp.asarray(l.weight, jnp.float32), jnp.asarray(l.bias, jnp.float32))
                     for l in target]

    def predict(trainable, x):
        adapted = jaxlora.apply(params, adapter._replace(trainable=trainable), config, mode="merged")
        layers = [theory.DenseLayer(adapted[f"layer_{i}"]["kernel"].T, adapted[f"layer_{i}"]["bias"])
                  for i in range(len(frozen))]
        return forward(kind, layers, x, xp=jnp)

    def loss(trainable, x):
        return jnp.mean((predict(trainable, x) - forward(kind, target_layers, x, xp=jnp)) ** 2)

    optimizer = optax.adam(LEARNING_RATE)

    @jax.jit
    def run(trainable, key):
        def step(carry, index):
            trainable, state = carry
            x = jax.random.normal(jax.random.fold_in(key, index), (BATCH, WIDTH))
            value, grads = jax.value_and_grad(loss)(trainable, x)
            updates, state = optimizer.update(grads, state, trainable)
            return (optax.apply_updates(trainable, updates), state), value

        (trainable, _), losses = jax.lax.scan(step, (trainable, optimizer.init(trainable)), jnp.arange(STEPS))
        return trainable, losses

    trainable, losses = run(adapter.trainable, jax.random.key(1000 + seed))
    test = float(jnp.mean((predict(trainable, jnp.asarray(x_test, jnp.float32)) - y_test) ** 2))
    return test, np.asarray(losses)


# %% [markdown]
# ## Run: every setting, seed and rank

# %%
import time

KINDS = {"linear": "deep linear model", "fnn": "ReLU FNN"}
results = {kind: {"construction": [], "predicted": [], "gradient": []} for kind in KINDS}
curves = {}
start = time.perf_counter()
for kind in KINDS:
    per_seed = {"construction": [], "predicted": [], "gradient": []}
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        frozen, target = random_models(kind, rng)
        x_test, x_calibration = rng.normal(size=(TEST_SAMPLES, WIDTH)), rng.normal(size=(2000, WIDTH))
        y_test = forward(kind, target, x_test)
        rows = {"construction": [], "predicted": [], "gradient": []}
        for rank in RANKS:
            mse, predicted = construction_mse(kind, frozen, target, rank, x_test, y_test, x_calibration)
            trained, losses = lora_mse(kind, frozen, target, rank, x_test, y_test, seed)
            rows["construction"].append(mse), rows["predicted"].append(predicted), rows["gradient"].append(trained)
            curves[(kind, seed, rank)] = losses
        for name, values in rows.items():
            per_seed[name].append(values)
    for name, values in per_seed.items():
        results[kind][name] = np.median(np.array(values), axis=0)
    print(f"{KINDS[kind]}: done after {time.perf_counter() - start:.0f} s")

# %%
print(f"{'model':<18} {'rank':>4} {'construction MSE':>17} {'predicted ||.||2':>17} {'gradient LoRA MSE':>18}")
for kind, label in KINDS.items():
    for i, rank in enumerate(RANKS):
        r = results[kind]
        print(f"{label:<18} {rank:>4} {r['construction'][i]:>17.3e} {r['predicted'][i]:>17.3e} {r['gradient'][i]:>18.3e}")

# %% [markdown]
# ## The figure
#
# Left of the dashed line (`R < D / L`) the construction's error follows the singular values of `E`;
# at and beyond it the construction is exact (up to float64 rounding), while gradient-trained LoRA
# gets close to it but not to zero in a finite number of steps.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for ax, (kind, label) in zip(axes, KINDS.items()):
    r = results[kind]
    ax.semilogy(RANKS, np.maximum(r["construction"], 1e-16), "o-", label="construction (jaxlora.theory; floor 1e-16)")
    ax.semilogy(RANKS, np.maximum(r["gradient"], 1e-16), "s-", label="gradient-trained LoRA (jaxlora.init/apply)")
    ax.axvline(WIDTH / FROZEN_DEPTH, color="gray", ls="--", lw=1, label="R = D / L")
    ax.set(title=f"{label}, D={WIDTH}, L={FROZEN_DEPTH}, target depth 1", xlabel="LoRA rank R", ylabel="test MSE")
    ax.legend(fontsize=8)
for rank in (RANKS[0], RANKS[-1]):
    axes[2].semilogy(curves[("fnn", 0, rank)], label=f"ReLU FNN, rank {rank}")
axes[2].set(title="gradient-trained LoRA: training loss", xlabel="Adam step", ylabel="batch MSE")
axes[2].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
full_rank = RANKS.index(max(RANKS))
for kind, label in KINDS.items():
    print(f"Final ({label}, rank {RANKS[full_rank]}): construction test MSE = {results[kind]['construction'][full_rank]:.3e}, "
          f"gradient-trained LoRA test MSE = {results[kind]['gradient'][full_rank]:.3e}")
