"""A-only asymmetric LoRA (the ablation: random orthonormal b frozen, a trained; r=8, alpha=16, dropout 0.05, query and value) on SST-2 with the asymmetry paper's protocol (`:offline` for MiniLM + local GLUE files).

One learning rate for LoRA, B-only and A-only, as the paper ran them: LoRA's per-task rates. ``:rank=16`` for rank 2r.

A shortcut for ``configs/glue.py:method=aonly``; the argument takes the same ``offline`` and task options.

    python train.py --config configs/aonly_sst2.py --workdir runs/aonly_sst2
    python train.py --config configs/aonly_sst2.py:offline --workdir runs/aonly_sst2 --config.max_steps=300
"""

from configs import glue


def get_config(arg=None):
    """The config; ``arg``: "offline" and/or a GLUE task name, comma-separated."""
    return glue.get_config(glue.with_method("aonly", arg))
