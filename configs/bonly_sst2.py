"""B-only asymmetric LoRA (random orthonormal a frozen, b trained; r=8, query and value) on SST-2 with the CondLoRA paper's protocol (`:offline` for MiniLM + local GLUE files).

The paper gives no B-only rates for this protocol: LoRA's per-task rates are used.
Zhu et al. compare B-only at rank 2r with LoRA at rank r: add --config.lora.rank=16 for that.

A shortcut for ``configs/glue.py:method=bonly``; the argument takes the same ``offline`` and task options.

    python train.py --config configs/bonly_sst2.py --workdir runs/bonly_sst2
    python train.py --config configs/bonly_sst2.py:offline --workdir runs/bonly_sst2 --config.max_steps=300
"""

from configs import glue


def get_config(arg=None):
    """The config; ``arg``: "offline" and/or a GLUE task name, comma-separated."""
    return glue.get_config(glue.with_method("bonly", arg))
