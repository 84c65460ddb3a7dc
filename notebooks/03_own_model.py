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
# # Adapters on your own Flax NNX model, factored
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxlora/jaxlora/blob/main/notebooks/03_own_model.ipynb)
#
# A model written with stock Flax NNX layers (`nnx.MultiHeadAttention`, `nnx.Linear`), nothing from
# jaxlora in it. `jaxlora.nnx.split` turns it into a plain parameter tree, `targets="all-linear"`
# finds every projection (attention's `(d, heads, head_dim)` kernels count as the
# `(d, heads * head_dim)` matrices they are), and inside `with jaxlora.intercept():` each adapted
# layer computes `x @ K + s * (x @ a) @ b`, never forming `K + s * a @ b`. The task: the frozen model
# must learn to match a *teacher*, the same network whose every projection got a low-rank change, so
# a rank-`RANK` LoRA can match it exactly and the loss shows how close training gets.

# %%
# Colab: install jaxlora from GitHub. Where it is importable already (a checkout, pip install -e .) this does nothing.
import importlib.util, subprocess, sys  # noqa: E401

if importlib.util.find_spec("jaxlora") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "jaxlora[notebook] @ git+https://github.com/jaxlora/jaxlora"], check=True)

# %% tags=["parameters"]
SMOKE = False  # True: a CI-sized run (CI sets it with papermill -p SMOKE True)
WIDTH, HEADS, DEPTH, TOKENS = 256, 4, 4, 64  # model width, attention heads, blocks, sequence length
TEACHER_RANK = 4  # rank of the change that makes the teacher
RANK = 8  # LoRA rank (>= TEACHER_RANK: the teacher is reachable)
BATCH = 64  # global batch, split over every device
STEPS = 1000
LEARNING_RATE = 3e-3

# %%
if SMOKE:
    WIDTH, DEPTH, TOKENS, BATCH, STEPS = 64, 2, 16, 32, 30
print(f"width {WIDTH}, {HEADS} heads, {DEPTH} blocks, {TOKENS} tokens; LoRA rank {RANK}, {STEPS} steps"
      + (" (SMOKE run)" if SMOKE else ""))

# %% [markdown]
# The devices JAX found: this notebook splits the batch over every device.

# %%
import jax

print(f"{jax.device_count()} {jax.default_backend()} device(s): {jax.devices()[0].device_kind}")
if jax.default_backend() != "tpu":
    print("No TPU found: in Colab choose Runtime > Change runtime type > TPU, then rerun (this run goes on, slower).")

# %% [markdown]
# ## Your model: stock NNX layers

# %%
import jax.numpy as jnp
from flax import nnx


class Block(nnx.Module):
    def __init__(self, width, heads, rngs):
        self.norm1, self.norm2 = nnx.LayerNorm(width, rngs=rngs), nnx.LayerNorm(width, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=width, decode=False, rngs=rngs)
        self.up, self.down = nnx.Linear(width, 4 * width, rngs=rngs), nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.down(nnx.gelu(self.up(self.norm2(x))))


class Model(nnx.Module):
    def __init__(self, width, heads, depth, rngs):
        self.blocks = nnx.List([Block(width, heads, rngs) for _ in range(depth)])
        self.head = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


# %% [markdown]
# ## Frozen model, teacher, adapter
#
# The teacher is the frozen model with a rank-`TEACHER_RANK` change on every matrix LoRA targets,
# made with jaxlora itself: a random LoRA adapter, merged.

# %%
import jaxlora

graphdef, frozen = jaxlora.nnx.split(Model(WIDTH, HEADS, DEPTH, nnx.Rngs(0)))
config = jaxlora.AdapterConfig("lora", rank=RANK, alpha=RANK, targets="all-linear")

teacher_config = jaxlora.AdapterConfig("lora", rank=TEACHER_RANK, alpha=TEACHER_RANK, targets="all-linear")
teacher_adapter = jaxlora.init(jax.random.key(1), frozen, teacher_config)
leaves, treedef = jax.tree.flatten(teacher_adapter.trainable)  # B = 0 at init: draw every factor instead
leaves = [jax.random.normal(jax.random.key(2 + i), leaf.shape) * 0.5 / jnp.sqrt(WIDTH) for i, leaf in enumerate(leaves)]
teacher_adapter = teacher_adapter._replace(trainable=jax.tree.unflatten(treedef, leaves))
teacher = jaxlora.merge(frozen, teacher_adapter, teacher_config)

adapter = jaxlora.init(jax.random.key(3), frozen, config)
print(jaxlora.param_table(frozen, adapter, config))

# %% [markdown]
# ## Training, data-parallel, factored
#
# `frozen` is an argument of the jitted step, not a closed-over constant (jit would fold the whole
# model into the compiled program). The batch is split over the mesh's `data` axis.

# %%
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

import jaxlora.training

mesh = jaxlora.training.make_mesh()
replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
frozen, teacher = jax.device_put(frozen, replicated), jax.device_put(teacher, replicated)
optimizer = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, STEPS))


def run(params, x):
    with jaxlora.intercept():  # adapted stock layers compute x @ K + s * (x @ a) @ b
        return jaxlora.nnx.merge(graphdef, params)(x)


def loss_fn(trainable, frozen, teacher, x):
    params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), config, mode="factored")
    return jnp.mean((run(params, x) - run(teacher, x)) ** 2)


@jax.jit
def step(trainable, opt_state, frozen, teacher, key):
    x = jax.lax.with_sharding_constraint(jax.random.normal(key, (BATCH, TOKENS, WIDTH)), split)
    loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen, teacher, x)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss


trainable = jax.device_put(adapter.trainable, replicated)
opt_state, losses = optimizer.init(trainable), []
for index in range(STEPS):
    trainable, opt_state, loss = step(trainable, opt_state, frozen, teacher, jax.random.key(100 + index))
    losses.append(float(loss))
print(f"MSE to the teacher {losses[0]:.3e} -> {losses[-1]:.3e} after {STEPS} steps on {jax.device_count()} device(s)")

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(np.arange(1, STEPS + 1), losses)
ax.set(title=f"LoRA r={RANK} towards a rank-{TEACHER_RANK} teacher", xlabel="step", ylabel="MSE to the teacher")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Factored, merged, and the plain model agree
#
# The factored run (inside `intercept`) and the merged weights (`jaxlora.merge`, no jaxlora at run
# time) give the same outputs; the merged tree loads straight back into the NNX model.

# %%
adapter = adapter._replace(trainable=trainable)
x = jax.random.normal(jax.random.key(7), (8, TOKENS, WIDTH))
factored = run(jaxlora.apply(frozen, adapter, config, mode="factored"), x)
merged_model = jaxlora.nnx.merge(graphdef, jaxlora.merge(frozen, adapter, config))
merged = merged_model(x)  # a plain NNX model: no intercept needed
print(f"largest |factored - merged| = {float(jnp.max(jnp.abs(factored - merged))):.2e}")
test_mse = float(jnp.mean((merged - run(teacher, x)) ** 2))
print(f"Final: test MSE to the teacher = {test_mse:.3e} (the frozen model starts at "
      f"{float(jnp.mean((run(frozen, x) - run(teacher, x)) ** 2)):.3e})")
