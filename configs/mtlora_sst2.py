"""MTLoRA (r x r transform inside the bottleneck, SHIM; r=8, alpha=8, query and value) on SST-2 with the CondLoRA paper's protocol (`:offline` for MiniLM + local GLUE files).

Kept on the protocol's query/value targets for a like-for-like table; MTLoRA's official recipe adapts
query, key, value and both FFN matrices with alpha=16: --config.lora.targets=all-linear --config.lora.alpha=16.
Other structures: --config.lora.mtlora.structure=icfm|ctcm|dtsm. No protocol rates exist: LoRA's are used.

A shortcut for ``configs/glue.py:method=mtlora``; the argument takes the same ``offline`` and task options.

    python train.py --config configs/mtlora_sst2.py --workdir runs/mtlora_sst2
    python train.py --config configs/mtlora_sst2.py:offline --workdir runs/mtlora_sst2 --config.max_steps=300
"""

from configs import glue


def get_config(arg=None):
    """The config; ``arg``: "offline" and/or a GLUE task name, comma-separated."""
    return glue.get_config(glue.with_method("mtlora", arg))
