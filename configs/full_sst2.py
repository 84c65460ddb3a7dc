"""Full fine-tuning (every parameter trains; the baseline) on SST-2 with the CondLoRA paper's protocol (`:offline` for MiniLM + local GLUE files).

2e-5 is the usual RoBERTa-base fine-tuning rate (not part of the CondLoRA protocol, which trains adapters only).

    python train.py --config configs/full_sst2.py --workdir runs/full_sst2
    python train.py --config configs/full_sst2.py:offline --workdir runs/full_sst2 --config.max_steps=300
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # config_flags loads this file by path: make `configs.common` importable
    sys.path.insert(0, ROOT)

from configs import common  # noqa: E402


def get_config(arg=None):
    """The config; ``arg``: "offline" and/or a GLUE task name, comma-separated."""
    config = common.get_config(arg, variant="full", learning_rates={task: 2e-5 for task in common.LORA_LEARNING_RATES},
                                offline_learning_rate=5e-5)
    return config
