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
# # LoRA on a decoder LLM, with generations before and after
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxlora/jaxlora/blob/main/notebooks/02_llm_lora.ipynb)
#
# LoRA (rank 8 on every attention and MLP projection) teaches a small instruction-tuned decoder a
# new answer format: asked for a country's capital, answer with the city's name alone. The model
# is SmolLM2-135M-Instruct (the `smollm2-135m` preset, a GGUF file that exists offline) or, on a TPU
# with Hub access, the larger Llama-architecture SmolLM2-1.7B-Instruct from the Hub. The training
# step is a few lines of JAX around `jaxlora.init` / `jaxlora.apply`, data-parallel over every
# device; `jaxlora.models.generate` (KV cache, greedy) shows the answers before and after.
#
# Colab: *Runtime > Change runtime type > TPU*; the TPU runtime's `jax[tpu]` is kept by the install.

# %%
# Colab: install jaxlora from GitHub. Where it is importable already (a checkout, pip install -e .) this does nothing.
import importlib.util, subprocess, sys  # noqa: E401

if importlib.util.find_spec("jaxlora") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "jaxlora[notebook] @ git+https://github.com/jaxlora/jaxlora"], check=True)

# %% tags=["parameters"]
SMOKE = False  # True: a CI-sized run (CI sets it with papermill -p SMOKE True)
MODEL = "smollm2-135m"  # a preset, a local folder or .gguf file, or a Hub id
TPU_MODEL = "HuggingFaceTB/SmolLM2-1.7B-Instruct"  # used instead on a TPU that reaches the Hub
RANK = 8
STEPS = 150
LEARNING_RATE = 1e-3
NEW_TOKENS = 12  # tokens generated per answer
DTYPE = "bfloat16"  # frozen weights and computation on TPU/GPU; the adapter stays float32

# %%
if SMOKE:  # a CPU-sized run: the small model, a few steps, float32 (XLA:CPU emulates bfloat16 matmuls)
    STEPS, DTYPE = 4, "float32"
print(f"{STEPS} LoRA steps at rank {RANK}" + (" (SMOKE run)" if SMOKE else ""))

# %% [markdown]
# The devices JAX found: this notebook splits the batch over every device.

# %%
import jax

print(f"{jax.device_count()} {jax.default_backend()} device(s): {jax.devices()[0].device_kind}")
if jax.default_backend() != "tpu":
    print("No TPU found: in Colab choose Runtime > Change runtime type > TPU, then rerun (this run goes on, slower).")

# %% [markdown]
# ## The model
#
# Without the Hub (or without a TPU) the notebook keeps the offline preset `smollm2-135m`.

# %%
import os

import jax.numpy as jnp

import jaxlora
import jaxlora.models
import jaxlora.util

hub_problem = jaxlora.util.hub_offline_reason()
if hub_problem is not None:
    print(f"Hugging Face Hub unreachable ({hub_problem}): using the offline preset 'smollm2-135m'; connect the "
          "runtime to the internet for the larger model.")
elif jax.default_backend() == "tpu" and not SMOKE:
    MODEL = TPU_MODEL
if hub_problem is not None and MODEL not in jaxlora.models.presets() and not os.path.exists(MODEL):
    MODEL = "smollm2-135m"
# SMOKE keeps the first of the model's layers (a warning lists the unused ones): minutes on a CPU.
overrides = {"num_hidden_layers": 1} if SMOKE else None
module, frozen = jaxlora.models.from_pretrained(MODEL, task="causal_lm", dtype=jnp.dtype(DTYPE), config_overrides=overrides)
tokenizer = jaxlora.models.load_tokenizer(MODEL)
print(f"{MODEL}: {sum(x.size for x in jax.tree.leaves(frozen)) / 1e6:.0f}M parameters in {DTYPE}")

# %% [markdown]
# ## The task: answer with the capital's name only
#
# Training pairs and held-out pairs in the model's chat template; the loss counts the answer tokens only.

# %%
import numpy as np

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Hungary", "Budapest"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Russia", "Moscow"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"), ("Cuba", "Havana"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Turkey", "Ankara"),
    # held out: the model never trains on these
    ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Czechia", "Prague"), ("Colombia", "Bogota"),
    ("South Korea", "Seoul"), ("Philippines", "Manila"), ("Ukraine", "Kyiv"), ("Australia", "Canberra"),
]
TRAIN, HELD_OUT = CAPITALS[:32], CAPITALS[32:]


def prompt_ids(country):
    """The question in the model's chat template, ending where the assistant's answer starts."""
    messages = [{"role": "user", "content": f"What is the capital of {country}?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def training_batch(pairs):
    """Right-padded ids, mask, and a loss mask on the answer tokens (the city, then end-of-turn)."""
    rows = [(prompt_ids(country), tokenizer(capital + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
            for country, capital in pairs]
    length = -(-max(len(q) + len(a) for q, a in rows) // 8) * 8
    ids = np.full((len(rows), length), tokenizer.eos_token_id, np.int32)
    mask, answer = np.zeros_like(ids), np.zeros(ids.shape, np.float32)
    for row, (question, reply) in enumerate(rows):
        ids[row, :len(question) + len(reply)], mask[row, :len(question) + len(reply)] = question + reply, 1
        answer[row, len(question):len(question) + len(reply)] = 1.0
    return ids, mask, answer


def answers(params, pairs):
    """Greedy answers up to end-of-turn (prompts left-padded, as generate wants)."""
    encoded = [prompt_ids(country) for country, _ in pairs]
    width = max(map(len, encoded))
    ids = np.array([[tokenizer.eos_token_id] * (width - len(e)) + e for e in encoded], np.int32)
    mask = np.array([[0] * (width - len(e)) + [1] * len(e) for e in encoded], np.int32)
    tokens = jaxlora.models.generate(module, params, ids, mask, max_new_tokens=NEW_TOKENS,
                                     eos_token_id=tokenizer.eos_token_id)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in np.asarray(tokens)]


def exact_match(replies, pairs):
    return float(np.mean([reply == capital for reply, (_, capital) in zip(replies, pairs)]))


before = answers(frozen, HELD_OUT)
for (country, capital), reply in zip(HELD_OUT, before):
    print(f"{country:>12}: {reply!r}")
print(f"held-out exact match before fine-tuning: {exact_match(before, HELD_OUT):.2f}")

# %% [markdown]
# ## LoRA, data-parallel over every device
#
# The batch is split over the mesh's `data` axis, the frozen weights and the adapter are replicated;
# `jax.grad` differentiates the adapter only.

# %%
import optax
from jax.sharding import NamedSharding, PartitionSpec

import jaxlora.training

config = jaxlora.AdapterConfig("lora", rank=RANK, alpha=2.0 * RANK, targets="all-linear")
adapter = jaxlora.init(jax.random.key(0), frozen, config)
print(jaxlora.param_table(frozen, adapter, config))

mesh = jaxlora.training.make_mesh()
replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
ids, mask, answer = (jax.device_put(a, split) for a in training_batch(TRAIN))
frozen = jax.device_put(frozen, replicated)
optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, LEARNING_RATE, max(STEPS // 10, 1), STEPS),
                        weight_decay=0.0)


def loss_fn(trainable, frozen, ids, mask, answer):
    params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), config, mode="factored")
    logits = module.apply({"params": params}, ids, mask)[:, :-1].astype(jnp.float32)
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
    weights = answer[:, 1:]
    return jnp.sum(per_token * weights) / jnp.sum(weights)


# The frozen weights and the batch are arguments, not closed-over constants: jit would otherwise fold
# the whole model into the compiled program (slow to compile, twice the memory).
@jax.jit
def step(trainable, opt_state, frozen, ids, mask, answer):
    loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen, ids, mask, answer)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss


trainable = jax.device_put(adapter.trainable, replicated)
opt_state, losses = optimizer.init(trainable), []
for _ in range(STEPS):
    trainable, opt_state, loss = step(trainable, opt_state, frozen, ids, mask, answer)
    losses.append(float(loss))
print(f"training loss {losses[0]:.3f} -> {losses[-1]:.3f} after {STEPS} steps on {jax.device_count()} device(s)")

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(np.arange(1, STEPS + 1), losses)
ax.set(title=f"LoRA r={RANK} on {MODEL}", xlabel="step", ylabel="answer-token cross-entropy", yscale="log")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## After fine-tuning
#
# The same `generate` call with the adapted weights: `jaxlora.merge` folds the adapter into plain
# arrays, so generation pays nothing for it.

# %%
adapter = adapter._replace(trainable=trainable)
after = answers(jaxlora.merge(frozen, adapter, config), HELD_OUT)
print(f"{'country':>12}  {'before':<40} after")
for (country, _), old, new in zip(HELD_OUT, before, after):
    print(f"{country:>12}  {old[:38]!r:<40} {new!r}")

# %%
print(f"Final: held-out exact match (capital only) before = {exact_match(before, HELD_OUT):.2f}, "
      f"after = {exact_match(after, HELD_OUT):.2f} ({STEPS} LoRA steps, {MODEL})")
