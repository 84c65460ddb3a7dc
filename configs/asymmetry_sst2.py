"""The asymmetry paper's protocol (Zhu et al. 2024; METHODS.md section 2) on SST-2: B-only r=8 by default.

One config and one learning rate for LoRA, B-only and A-only; alpha=16 at r=8 and alpha=32 at r=16 (scale 2),
dropout 0.05, query and value, classifier trained, the final model tested, gradient clipping at norm 1.0.
The argument takes ``configs/glue.py``'s options (``method=``, ``rank=``, ``task=``, ``offline``):

    python train.py --config configs/asymmetry_sst2.py --workdir runs/bonly_r8                   # B-only r=8
    python train.py --config configs/asymmetry_sst2.py:rank=16 --workdir runs/bonly_r16          # B-only rank 2r
    python train.py --config configs/asymmetry_sst2.py:method=lora --workdir runs/lora_asym      # its LoRA
    python train.py --config configs/asymmetry_sst2.py:method=aonly,offline --workdir runs/a --config.max_steps=300
"""

from configs import glue


def get_config(arg=None):
    """The config; ``arg``: configs/glue.py's options (``method=bonly`` unless given), comma-separated."""
    options = ",".join(filter(None, (arg,)))
    method = "" if "method=" in options else "method=bonly"
    return glue.get_config(",".join(filter(None, (method, "protocol=asymmetry", options))))
