"""B-only asymmetric LoRA (random orthonormal a frozen, b trained; r=8, query and value) on SST-2 with the CondLoRA paper's protocol (`:offline` for MiniLM + local GLUE files).

The paper gives no B-only rates for this protocol: LoRA's per-task rates are used.
Zhu et al. compare B-only at rank 2r with LoRA at rank r: add --config.lora.rank=16 for that.

    python train.py --config configs/bonly_sst2.py --workdir runs/bonly_sst2
    python train.py --config configs/bonly_sst2.py:offline --workdir runs/bonly_sst2 --config.max_steps=300
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # config_flags loads this file by path: make `configs.common` importable
    sys.path.insert(0, ROOT)

from configs import common  # noqa: E402


def get_config(arg=None):
    """The config; ``arg``: "offline" and/or a GLUE task name, comma-separated."""
    config = common.get_config(arg, variant="bonly", learning_rates=common.LORA_LEARNING_RATES, offline_learning_rate=1e-3)
    return config
