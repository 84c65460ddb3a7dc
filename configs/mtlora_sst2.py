"""MTLoRA (r x r transform inside the bottleneck, SHIM; r=8, alpha=16) on SST-2 with MTLoRA's official protocol (`:offline` for MiniLM + local GLUE files).

The official targets: query, value, the intermediate dense and the FFN output dense (not ``all-linear``,
which adds key, the attention output and the pooler); batch 32, learning rate 5e-4, 60 epochs, warmup 0.06,
weight decay 0.1. The fair baseline is LoRA on the same targets: ``configs/glue.py:method=lora,protocol=mtlora``.
Other structures: --config.lora.mtlora.structure=icfm|ctcm|dtsm.

A shortcut for ``configs/glue.py:method=mtlora``; the argument takes the same ``offline`` and task options.

    python train.py --config configs/mtlora_sst2.py --workdir runs/mtlora_sst2
    python train.py --config configs/mtlora_sst2.py:offline --workdir runs/mtlora_sst2 --config.max_steps=300
"""

from configs import glue


def get_config(arg=None):
    """The config; ``arg``: "offline" and/or a GLUE task name, comma-separated."""
    return glue.get_config(glue.with_method("mtlora", arg))
