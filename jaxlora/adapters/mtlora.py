"""MTLoRA (Liang et al., 2024): an ``r x r`` transform inside the bottleneck.

In PyTorch layout the update is ``Delta W = B T A``; in kernel layout

    y = x @ K + s * dropout(x) @ a @ t @ b,      t = T.T

with one of four structures for ``T``, each with its own parameters
(stored in PyTorch orientation, as the paper writes them):

=========  =========  ===================
structure  T          extra parameters
=========  =========  ===================
shim       C          C ``(r, r)``
icfm       C @ C.T    C ``(r, r)``
ctcm       C @ D      C, D ``(r, r)``
dtsm       C + D      C, D ``(r, r)``
=========  =========  ===================

Options (:class:`MTLoRAOptions`, ``AdapterConfig("mtlora", options={"structure": "ctcm"})``):
``structure`` picks ``T``; ``init`` is ``"kaiming"`` (the official NLU/NLG code: ``a``, C, D Kaiming-uniform
with fan_in ``d_in`` for ``a`` and ``r`` for C, D; ``b = 0``) or ``"identity"``
(the authors' later advice: T = I, i.e. C = I, and D = I for ctcm, D = 0 for
dtsm; ``a`` Gaussian with std ``1/r`` as PEFT's ``"gaussian"`` init; ``b = 0``).
With T = I the update is exactly LoRA's.

>>> cfg = jaxlora.AdapterConfig("mtlora", rank=2, targets=("query",), options={"structure": "ctcm"})
>>> adapter = jaxlora.init(jax.random.key(0), {"query": {"kernel": jnp.ones((4, 4))}}, cfg)
>>> sorted(adapter.trainable["lowrank"]["query"])
['a', 'b', 'c', 'd']
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxlora.adapters.base import AdaptedKernel, Variant, kaiming_uniform, path_rng, register

STRUCTURES = ("shim", "icfm", "ctcm", "dtsm")
INITS = ("kaiming", "identity")


def transform(structure: str, c: jax.Array, d: jax.Array | None) -> jax.Array:
    """The paper's ``T`` (PyTorch orientation) for a structure.

    >>> c = jnp.array([[1.0, 2.0], [0.0, 1.0]])
    >>> transform("icfm", c, None)   # c @ c.T
    Array([[5., 2.],
           [2., 1.]], dtype=float32)
    """
    if structure == "shim":
        return c
    if structure == "icfm":
        return c @ c.T
    if structure == "ctcm":
        return c @ d
    if structure == "dtsm":
        return c + d
    raise ValueError(f"Unknown MTLoRA structure {structure!r}; choose one of {STRUCTURES}.")


@dataclasses.dataclass(frozen=True)
class MTLoRAOptions:
    """MTLoRA's options.

    Each field's ``metadata["choices"]`` lists its values (the tests cover each).

    Attributes:
      structure: the transform ``T``: ``"shim"``, ``"icfm"``, ``"ctcm"`` or ``"dtsm"``.
      init: ``"kaiming"`` (the official code) or ``"identity"`` (``T = I``).

    >>> MTLoRAOptions(structure="tshm")
    Traceback (most recent call last):
    ValueError: Unknown MTLoRA structure 'tshm'; choose one of ('shim', 'icfm', 'ctcm', 'dtsm').
    """

    structure: str = dataclasses.field(default="shim", metadata={"choices": STRUCTURES})
    init: str = dataclasses.field(default="kaiming", metadata={"choices": INITS})

    def __post_init__(self):
        if self.structure not in STRUCTURES:
            raise ValueError(f"Unknown MTLoRA structure {self.structure!r}; choose one of {STRUCTURES}.")
        if self.init not in INITS:
            raise ValueError(f"Unknown MTLoRA init {self.init!r}; choose one of {INITS}.")


@struct.dataclass
class MTLoRAKernel(AdaptedKernel):
    """Frozen ``kernel`` with ``a`` ``(d_in, r)``, ``c`` (and ``d``) ``(r, r)``, ``b`` ``(r, d_out)``."""

    kernel: jax.Array
    a: jax.Array
    b: jax.Array
    c: jax.Array
    d: jax.Array | None
    scale: float = struct.field(pytree_node=False, default=1.0)
    dropout_rate: float = struct.field(pytree_node=False, default=0.0)
    structure: str = struct.field(pytree_node=False, default="shim")

    def t(self) -> jax.Array:
        """``T.T``: the transform in kernel orientation."""
        return transform(self.structure, self.c, self.d).T

    def factors(self):
        return self.a @ self.t(), self.b


@register
class MTLoRA(Variant):
    """LoRA with an ``r x r`` transform ``T`` in the bottleneck (``config.options.structure``).

    >>> jaxlora.AdapterConfig("mtlora", options={"structure": "ctcm"}).describe()
    'mtlora (structure=ctcm, init=kaiming)'
    """

    name = "mtlora"
    Options = MTLoRAOptions
    legacy_config_keys = {"structure": "structure", "mtlora_init": "init"}

    def init(self, rng, targets, config):
        options = config.options
        two = options.structure in ("ctcm", "dtsm")
        trainable = {}
        for path, t in targets.items():
            k_a, k_c, k_d = jax.random.split(path_rng(rng, path), 3)
            r = t.rank
            if options.init == "kaiming":
                a = kaiming_uniform(k_a, (t.d_in, r), fan_in=t.d_in)
                c = kaiming_uniform(k_c, (r, r), fan_in=r)
                d = kaiming_uniform(k_d, (r, r), fan_in=r)
            else:
                a = jax.random.normal(k_a, (t.d_in, r), jnp.float32) / r
                c = jnp.eye(r, dtype=jnp.float32)
                d = jnp.eye(r, dtype=jnp.float32) if options.structure == "ctcm" else jnp.zeros((r, r), jnp.float32)
            params = {"a": a, "b": jnp.zeros((r, t.d_out), jnp.float32), "c": c}
            if two:
                params["d"] = d
            trainable[path] = params
        return trainable, {}

    def node(self, target, kernel, trainable, fixed, config):
        p = trainable[target.path]
        return MTLoRAKernel(
            kernel, p["a"], p["b"], p["c"], p.get("d"),
            scale=target.scale, dropout_rate=config.dropout, structure=config.options.structure,
        )
