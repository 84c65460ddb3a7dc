"""Full fine-tuning (every parameter trains; the baseline) on SST-2 with the CondLoRA paper's protocol (`:offline` for MiniLM + local GLUE files).

2e-5 is the usual RoBERTa-base fine-tuning rate (not part of the CondLoRA protocol, which trains adapters only).

A shortcut for ``configs/glue.py:method=full``; the argument takes the same ``offline`` and task options.

    python train.py --config configs/full_sst2.py --workdir runs/full_sst2
    python train.py --config configs/full_sst2.py:offline --workdir runs/full_sst2 --config.max_steps=300
"""

from configs import glue


def get_config(arg=None):
    """The config; ``arg``: "offline" and/or a GLUE task name, comma-separated."""
    return glue.get_config(glue.with_method("full", arg))
