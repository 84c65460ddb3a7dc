"""B-only asymmetric LoRA (random orthonormal a frozen, b trained; r=8, alpha=16, dropout 0.05, query and value) on SST-2 with the asymmetry paper's protocol (`:offline` for MiniLM + local GLUE files).

One learning rate for LoRA, B-only and A-only, as the paper ran them: LoRA's per-task rates.
Zhu et al. compare B-only at rank 2r with LoRA at rank r: ``:rank=16`` (alpha 32, the paper's scale 2).

A shortcut for ``configs/glue.py:method=bonly``; the argument takes the same ``offline`` and task options.

    python train.py --config configs/bonly_sst2.py --workdir runs/bonly_sst2
    python train.py --config configs/bonly_sst2.py:offline --workdir runs/bonly_sst2 --config.max_steps=300
"""

from configs import glue


def get_config(arg=None):
    """The config; ``arg``: "offline" and/or a GLUE task name, comma-separated."""
    return glue.get_config(glue.with_method("bonly", arg))
