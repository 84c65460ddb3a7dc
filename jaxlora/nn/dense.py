"""A Linen dense layer that runs factored adapters.

:class:`Dense` behaves like ``flax.linen.Dense`` on a plain kernel. When the
kernel it finds in its params is an :class:`~jaxlora.adapters.base.AdaptedKernel`
(what ``jaxlora.apply(..., mode="factored")`` puts there), it computes

    y = x @ K + s * (dropout(x) @ a) @ b + bias

so the update ``K + s * delta`` is never formed and no gradient of ``K`` is ever
built: ``jax.grad`` with respect to the adapter sees only the bottleneck. The
product runs through :func:`jaxlora.nn.adapted_matmul.adapted_matmul` on the
node's ``factors()``, whose backward pass is written for skinny factors.

Why not ``self.param``: Linen's ``param`` checks an existing value's leaves
against the shape its init function would produce, which a node holding ``K``
and its factors fails. So the kernel is read with ``get_variable`` when it
exists and created with ``param`` only at init time.

A frozen kernel stored quantized (:func:`jaxlora.quantize`, QLoRA) is read the
same way and dequantized inside the layer, right before the product: the
full-precision ``K`` is a temporary of the step, not one of its arguments, and
the factored product, its custom backward pass included, is unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlora.adapters.base import AdaptedKernel
from jaxlora.nn.adapted_matmul import adapted_matmul

Array = jax.Array


def read_param(module: nn.Module, name: str, init_fn: Callable, *init_args) -> Any:
    """Read param ``name`` as stored (adapter nodes included), creating it at init.

    >>> class Layer(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return x @ read_param(self, "kernel", nn.initializers.ones, (4, 8))
    >>> Layer().init(jax.random.key(0), jnp.ones((1, 4)))["params"]["kernel"].shape
    (4, 8)
    """
    if module.has_variable("params", name):
        return module.get_variable("params", name)
    return module.param(name, init_fn, *init_args)


def _random_uint16(rng: Array, shape: tuple[int, ...]) -> Array:
    """Uniform 16-bit integers (held in uint32), two per 32-bit word the PRNG draws."""
    if shape and shape[-1] % 2 == 0:
        # Split along the last axis: no flat concatenate/reshape of the whole tensor.
        words = jax.random.bits(rng, shape[:-1] + (shape[-1] // 2,), jnp.uint32)
        return jnp.concatenate([words & 0xFFFF, words >> 16], axis=-1)
    size = math.prod(shape)
    words = jax.random.bits(rng, ((size + 1) // 2,), jnp.uint32)
    return jnp.concatenate([words & 0xFFFF, words >> 16])[:size].reshape(shape)


def dropout(x: Array, rate: float, rng: Array) -> Array:
    """Inverted dropout that draws 16 random bits per element instead of 32.

    ``jax.random.bernoulli`` spends one 32-bit PRNG word per element, and on CPU the
    threefry words are the cost of dropout (a MiniLM-L6 train step spent about 14% of its
    time there). Two 16-bit halves per word halve that work (2.5x faster mask, measured).
    An element is kept when its 16 bits fall below ``round((1 - rate) * 2**16)``, and kept
    values are scaled by the exact inverse of that probability, so the expectation is
    unchanged; the drop rate is ``rate`` to within ``2**-17``.

    >>> y = dropout(jnp.ones((4, 8)), 0.1, jax.random.key(0))   # entries are 0 or ~1.111
    """
    if rate <= 0.0:
        return x
    threshold = int(round((1.0 - rate) * 65536))
    if threshold <= 0:
        return jnp.zeros_like(x)
    keep = _random_uint16(rng, x.shape) < threshold
    return jnp.where(keep, x * jnp.asarray(65536.0 / threshold, x.dtype), jnp.zeros_like(x))


def factored_product(x: Array, kernel: Array, node: AdaptedKernel, lowrank_input: Array | None = None) -> Array:
    """``x @ kernel + s * (lowrank_input @ a) @ b`` for 2-D ``x``, from ``node.factors()``.

    ``kernel`` is the node's frozen matrix already cast to ``x``'s dtype. With one
    dtype throughout the product runs through :func:`adapted_matmul`; with mixed
    precision (bf16 weights, fp32 factors) the low-rank term stays in the factors'
    precision and is cast once, as PEFT does.

    >>> from jaxlora.adapters.lora import LoRAKernel
    >>> node = LoRAKernel(jnp.eye(3), jnp.ones((3, 1)), jnp.ones((1, 3)), scale=2.0)
    >>> factored_product(jnp.ones((1, 3)), node.kernel, node).tolist()
    [[7.0, 7.0, 7.0]]
    """
    a, b = node.factors()
    if a.dtype == b.dtype == x.dtype == kernel.dtype:
        return adapted_matmul(x, kernel, a, b, node.scale, lowrank_input=lowrank_input)
    h = x if lowrank_input is None else lowrank_input
    return x @ kernel + (node.scale * ((h @ a) @ b)).astype(x.dtype)


class Dense(nn.Module):
    """``y = x @ kernel + bias``, with factored adapters when the kernel is a node.

    Attributes:
      features: output size.
      use_bias: whether to add a bias.
      dtype: computation dtype (``None``: inferred from inputs and params).
      param_dtype: dtype of freshly initialised params.
      kernel_init, bias_init: initialisers used at ``init`` time.
      kernel_axes: logical axis names of the kernel, ``(in, out)``, so the
        training program can map it onto a device mesh.

    >>> layer = Dense(8, kernel_axes=("embed", "mlp"))
    >>> params = nn.unbox(layer.init(jax.random.key(0), jnp.ones((2, 4)))["params"])
    >>> layer.apply({"params": params}, jnp.ones((2, 4))).shape
    (2, 8)
    """

    features: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    kernel_axes: Sequence[str | None] = (None, None)

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        init = nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes))
        kernel = read_param(self, "kernel", init, (x.shape[-1], self.features), self.param_dtype)
        kernel = nn.unbox(kernel) if isinstance(kernel, nn.Partitioned) else kernel
        bias = None
        if self.use_bias:
            b_init = nn.with_logical_partitioning(self.bias_init, (self.kernel_axes[-1],))
            bias = nn.unbox(read_param(self, "bias", b_init, (self.features,), self.param_dtype))

        adapted = kernel if isinstance(kernel, AdaptedKernel) else None
        frozen = adapted.kernel if adapted is not None else kernel
        dtype = self.dtype or jnp.result_type(x.dtype, frozen.dtype)
        # Work on (tokens, features): with one leading axis, every weight gradient (dK = x.T @ g,
        # db = z.T @ g) contracts a single axis and XLA:CPU reads the cotangent g as it lies. With
        # (batch, length, features) it transposes the whole g first, for each weight gradient
        # (measured: 52 ms instead of 3 ms for one 2048 x 1536 cotangent; docs/BENCHMARKS.md).
        lead = x.shape[:-1]
        x = x.astype(dtype).reshape(-1, x.shape[-1])
        frozen = frozen.astype(dtype)  # a quantized kernel (jaxlora.quantize) is dequantized here, in the step

        if adapted is None:
            y = x @ frozen
        else:
            h = None
            if adapted.dropout_rate > 0.0 and not deterministic:
                h = dropout(x, adapted.dropout_rate, self.make_rng("dropout"))
            y = factored_product(x, frozen, adapted, h)

        if bias is not None:
            y = y + bias.astype(dtype)
        return y.reshape(*lead, self.features)
