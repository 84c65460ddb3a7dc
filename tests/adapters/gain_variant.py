"""A variant with one option, defined outside jaxlora/adapters/: the proof that a variant is one file.

"gainlora" is LoRA whose update is multiplied by a fixed ``gain`` (its option): ``delta = gain * a @ b``.
Importing this module registers it; nothing in jaxlora names it.
"""

import dataclasses

import jax.numpy as jnp
from flax import struct

from jaxlora.adapters.base import Variant, kaiming_uniform, path_rng, register
from jaxlora.adapters.lora import LoRAKernel


@dataclasses.dataclass(frozen=True)
class GainOptions:
    gain: float = 1.0

    def __post_init__(self):
        if not self.gain > 0:
            raise ValueError(f"gainlora's gain must be positive, got {self.gain!r}.")


@struct.dataclass
class GainKernel(LoRAKernel):
    """LoRA's node (``kernel``, ``a``, ``b``) with the fixed gain folded into ``a``."""

    gain: float = struct.field(pytree_node=False, default=1.0)

    def factors(self):
        return self.gain * self.a, self.b


@register
class GainLoRA(Variant):
    name = "gainlora"
    Options = GainOptions

    def init(self, rng, targets, config):
        return {
            path: {"a": kaiming_uniform(path_rng(rng, path), (t.d_in, t.rank), fan_in=t.d_in),
                   "b": jnp.zeros((t.rank, t.d_out), jnp.float32)}
            for path, t in targets.items()
        }, {}

    def node(self, target, kernel, trainable, fixed, config):
        p = trainable[target.path]
        return GainKernel(kernel, p["a"], p["b"], scale=target.scale, dropout_rate=config.dropout,
                          gain=float(config.options.gain))
