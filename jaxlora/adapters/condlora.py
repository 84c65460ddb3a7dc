"""CondLoRA (Kim et al., LREC-COLING 2024): one linear map per module type makes
every layer's LoRA factors from that layer's frozen weight.

For module type ``m`` (``"query"``, ``"value"``, ...) two matrices are trained,
``theta_a`` and ``theta_b`` of shape ``(r, d)``, shared by every layer. For a
square kernel ``K`` of that type (the official code, which produced the paper's
numbers; the paper's text writes a transpose the code does not have):

    a = K.T @ theta_a.T        # (d, r)
    b = theta_b @ K            # (r, d)
    y = x @ K + s * (x @ a) @ b

``theta_a`` is Kaiming-uniform (fan_in = d), ``theta_b = 0``. Trainable
parameters are ``2 * r * d`` per module type, independent of depth (RoBERTa-base,
query and value, r=8: 24,576 against LoRA's 294,912). Sharing needs no special
code: each layer's node holds the same ``theta`` arrays, and ``jax.grad`` sums
the contributions of all layers.

**Rectangular extension (ours, not the paper's; opt in with ``rectangular=True``).**
The paper's form needs ``d_in == d_out``. For a ``(d_in, d_out)`` kernel the
extension uses ``a = K @ phi_a.T`` with ``phi_a: (r, d_out)`` and
``b = psi_b @ K`` with ``psi_b: (r, d_in)``. Square module types keep the paper's
form even when the extension is on, so the paper's setting is unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxlora.adapters.base import AdaptedKernel, Variant, kaiming_uniform, path_rng, register


@struct.dataclass
class CondLoRAKernel(AdaptedKernel):
    """Frozen ``kernel`` and its module type's shared ``theta_a``, ``theta_b``."""

    kernel: jax.Array
    theta_a: jax.Array
    theta_b: jax.Array
    scale: float = struct.field(pytree_node=False, default=1.0)
    dropout_rate: float = struct.field(pytree_node=False, default=0.0)
    rectangular: bool = struct.field(pytree_node=False, default=False)

    def factors(self):
        k = self.kernel.astype(jnp.float32)
        a = k @ self.theta_a.T if self.rectangular else k.T @ self.theta_a.T
        b = self.theta_b @ k
        return a, b


def _group_shapes(targets):
    shapes: dict[str, set] = {}
    for t in targets.values():
        shapes.setdefault(t.group, set()).add((t.shape, t.rank, t.scale))
    return shapes


@register
class CondLoRA(Variant):
    """Shared per-module-type maps producing every layer's factors.

    >>> adapter = jaxlora.init(key, frozen, AdapterConfig("condlora", rank=8, alpha=8))
    >>> adapter.trainable["lowrank"]["query"]["theta_a"].shape   # (8, 768) on RoBERTa-base
    """

    name = "condlora"

    def check(self, targets, config):
        for group, variants in _group_shapes(targets).items():
            if len(variants) > 1:
                raise ValueError(
                    f"CondLoRA shares one map per module type, but the {group!r} modules differ in "
                    f"shape, rank or scale: {sorted(variants)}. Give them one rank/alpha, or target "
                    f"them by different module names."
                )
            ((d_in, d_out), _, _), = variants
            if d_in != d_out and not config.rectangular:
                raise ValueError(
                    f"CondLoRA (paper form) needs square weights, but the {group!r} modules have shape "
                    f"({d_in}, {d_out}). Target square modules (e.g. query, value), or set "
                    f"rectangular=True for jaxlora's documented rectangular extension."
                )

    def init(self, rng, targets, config):
        self.check(targets, config)
        trainable = {}
        for group, variants in sorted(_group_shapes(targets).items()):
            ((d_in, d_out), rank, _), = variants
            square = d_in == d_out
            # theta_a acts on K's output side in the paper's form, phi_a in the extension.
            a_dim = d_in if square else d_out
            # Keyed by the shared map's own path, (group,), so adding a module type leaves the others' init alone.
            trainable[(group,)] = {
                "theta_a": kaiming_uniform(path_rng(rng, (group,)), (rank, a_dim), fan_in=a_dim),
                "theta_b": jnp.zeros((rank, d_in), jnp.float32),
            }
        return trainable, {}

    def node(self, target, kernel, trainable, fixed, config):
        p = trainable[(target.group,)]
        return CondLoRAKernel(
            kernel,
            p["theta_a"],
            p["theta_b"],
            scale=target.scale,
            dropout_rate=config.dropout,
            rectangular=target.d_in != target.d_out,
        )
