"""CondLoRA (one shared linear map per module type; r=8, alpha=8, query and value) on SST-2 with the CondLoRA paper's protocol (`:offline` for MiniLM + local GLUE files).

Learning rates: the paper's per-task CondLoRA rates (METHODS.md section 3). As the official scripts: gradient
clipping at norm 1.0, validation every 1500 steps on epochs of at least 1500 steps (else once per epoch), early
stopping with patience 30 on SST-2, MRPC, QNLI and STS-B.

A shortcut for ``configs/glue.py:method=condlora``; the argument takes the same ``offline`` and task options.

    python train.py --config configs/condlora_sst2.py --workdir runs/condlora_sst2
    python train.py --config configs/condlora_sst2.py:offline --workdir runs/condlora_sst2 --config.max_steps=300
"""

from configs import glue


def get_config(arg=None):
    """The config; ``arg``: "offline" and/or a GLUE task name, comma-separated."""
    return glue.get_config(glue.with_method("condlora", arg))
