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

**Rectangular extension (ours, not the paper's; opt in with the option
``rectangular``: ``AdapterConfig("condlora", options={"rectangular": True})``).**
The paper's form needs ``d_in == d_out``. For a ``(d_in, d_out)`` kernel the
extension uses ``a = K @ phi_a.T`` with ``phi_a: (r, d_out)`` and
``b = psi_b @ K`` with ``psi_b: (r, d_in)``. Square module types keep the paper's
form even when the extension is on, so the paper's setting is unchanged.

>>> frozen = {"layer_0": {"query": {"kernel": jnp.eye(6)}}, "layer_1": {"query": {"kernel": jnp.eye(6)}}}
>>> adapter = jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig("condlora", rank=2, targets=("query",)))
>>> adapter.trainable["lowrank"]["query"]["theta_a"].shape   # one (r, d) map for both layers
(2, 6)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxlora.adapters.base import AdaptedKernel, Variant, kaiming_uniform, path_rng, register


@dataclasses.dataclass(frozen=True)
class CondLoRAOptions:
    """CondLoRA's options.

    Attributes:
      rectangular: allow non-square kernels, with the rectangular extension
        above (jaxlora's, not in the paper).
    """

    rectangular: bool = False


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

    >>> frozen = {"query": {"kernel": jnp.ones((6, 6))}, "intermediate": {"kernel": jnp.ones((6, 12))}}
    >>> cfg = jaxlora.AdapterConfig("condlora", rank=2, targets=("query", "intermediate"))
    >>> jaxlora.init(jax.random.key(0), frozen, cfg)
    Traceback (most recent call last):
    ValueError: CondLoRA (paper form) needs square weights, but the 'intermediate' modules have shape (6, 12). Target modules with square weights (BERT's query and value; with grouped-query attention q_proj and o_proj, not k_proj or v_proj), or set the option rectangular=True (options={'rectangular': True}) for jaxlora's documented rectangular extension.
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg.replace(options={"rectangular": True}))
    >>> adapter.trainable["lowrank"]["intermediate"]["theta_a"].shape   # phi_a: (r, d_out)
    (2, 12)
    """

    name = "condlora"
    Options = CondLoRAOptions
    legacy_config_keys = {"rectangular": "rectangular"}

    def check(self, targets, config):
        for group, variants in _group_shapes(targets).items():
            if len(variants) > 1:
                raise ValueError(
                    f"CondLoRA shares one map per module type, but the {group!r} modules differ in "
                    f"shape, rank or scale: {sorted(variants)}. Give them one rank/alpha, or target "
                    f"them by different module names."
                )
            ((d_in, d_out), _, _), = variants
            if d_in != d_out and not config.options.rectangular:
                raise ValueError(
                    f"CondLoRA (paper form) needs square weights, but the {group!r} modules have shape "
                    f"({d_in}, {d_out}). Target modules with square weights (BERT's query and value; with grouped-query "
                    f"attention q_proj and o_proj, not k_proj or v_proj), or set the option "
                    f"rectangular=True (options={{'rectangular': True}}) for jaxlora's documented "
                    f"rectangular extension."
                )

    def init(self, rng, targets, config):
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
