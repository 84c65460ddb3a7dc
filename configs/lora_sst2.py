"""LoRA (r=8, alpha=8, query and value; classifier trained) on SST-2 with the CondLoRA paper's protocol (`:offline` for MiniLM + local GLUE files).

Learning rates: the paper's per-task LoRA rates (METHODS.md section 3).

A shortcut for ``configs/glue.py:method=lora``; the argument takes the same ``offline`` and task options.

    python train.py --config configs/lora_sst2.py --workdir runs/lora_sst2
    python train.py --config configs/lora_sst2.py:offline --workdir runs/lora_sst2 --config.max_steps=300
"""

from configs import glue


def get_config(arg=None):
    """The config; ``arg``: "offline" and/or a GLUE task name, comma-separated."""
    return glue.get_config(glue.with_method("lora", arg))
