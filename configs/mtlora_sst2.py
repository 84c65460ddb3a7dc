"""MTLoRA (r x r transform inside the bottleneck, SHIM; r=8, alpha=8, query and value) on SST-2 with the CondLoRA paper's protocol (`:offline` for MiniLM + local GLUE files).

Kept on the protocol's query/value targets for a like-for-like table; MTLoRA's official recipe adapts
query, key, value and both FFN matrices with alpha=16: --config.lora.targets=all-linear --config.lora.alpha=16.
Other structures: --config.lora.mtlora.structure=icfm|ctcm|dtsm. No protocol rates exist: LoRA's are used.

    python train.py --config configs/mtlora_sst2.py --workdir runs/mtlora_sst2
    python train.py --config configs/mtlora_sst2.py:offline --workdir runs/mtlora_sst2 --config.max_steps=300
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # config_flags loads this file by path: make `configs.common` importable
    sys.path.insert(0, ROOT)

from configs import common  # noqa: E402


def get_config(arg=None):
    """The config; ``arg``: "offline" and/or a GLUE task name, comma-separated."""
    config = common.get_config(arg, variant="mtlora", learning_rates=common.LORA_LEARNING_RATES, offline_learning_rate=1e-3)
    config.lora.mtlora.structure = "shim"
    return config
