"""LoRA (Hu et al., 2021): ``y = x @ K + s * (dropout(x) @ a) @ b``.

``a`` is Kaiming-uniform (PyTorch's default for ``nn.Linear``, fan_in = d_in),
``b`` starts at zero so the adapted model equals the frozen one at step 0.
Both train: ``r * (d_in + d_out)`` parameters per matrix.

:class:`LoRAKernel` is also the node of every variant whose factors are stored
as they are (B-only, A-only): which factor trains is a matter of which tree it
lives in, not of the forward computation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxlora.adapters.base import AdaptedKernel, Variant, kaiming_uniform, path_rng, register


@struct.dataclass
class LoRAKernel(AdaptedKernel):
    """Frozen ``kernel`` ``(d_in, d_out)`` with factors ``a`` ``(d_in, r)``, ``b`` ``(r, d_out)``."""

    kernel: jax.Array
    a: jax.Array
    b: jax.Array
    scale: float = struct.field(pytree_node=False, default=1.0)
    dropout_rate: float = struct.field(pytree_node=False, default=0.0)

    def factors(self):
        return self.a, self.b


@register
class LoRA(Variant):
    """Standard LoRA: ``a`` Kaiming-uniform, ``b = 0``, both trained.

    >>> frozen = {"query": {"kernel": jnp.ones((6, 4))}}
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig("lora", rank=2, targets=("query",)))
    >>> jax.tree.map(jnp.shape, adapter.trainable["lowrank"])   # r * (d_in + d_out) numbers
    {'query': {'a': (6, 2), 'b': (2, 4)}}
    """

    name = "lora"

    def init(self, rng, targets, config):
        trainable = {}
        for path, t in targets.items():
            trainable[path] = {
                "a": kaiming_uniform(path_rng(rng, path), (t.d_in, t.rank), fan_in=t.d_in),
                "b": jnp.zeros((t.rank, t.d_out), jnp.float32),
            }
        return trainable, {}

    def node(self, target, kernel, trainable, fixed, config):
        p = trainable[target.path]
        return LoRAKernel(kernel, p["a"], p["b"], scale=target.scale, dropout_rate=config.dropout)
