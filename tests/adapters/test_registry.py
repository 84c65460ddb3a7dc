"""A variant is one module: the package finds it, and user variants register too."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

import jaxlora
from jaxlora.adapters.base import AdaptedKernel, Variant, register


def test_builtin_variants_are_discovered():
    assert set(jaxlora.registered_variants()) >= {"lora", "bonly", "aonly", "condlora", "mtlora"}


def test_a_user_defined_variant_works_everywhere():
    @struct.dataclass
    class DiagKernel(AdaptedKernel):  # delta = a @ diag(v) @ b with a, b = I[:, :r] and I[:r]
        kernel: jax.Array
        v: jax.Array
        scale: float = struct.field(pytree_node=False, default=1.0)
        dropout_rate: float = struct.field(pytree_node=False, default=0.0)

        def factors(self):
            r = self.v.shape[0]
            return jnp.eye(self.kernel.shape[0], r) * self.v, jnp.eye(r, self.kernel.shape[1])

    @register
    class Diag(Variant):
        name = "test-diag"

        def init(self, rng, targets, config):
            return {p: {"v": jnp.zeros((t.rank,))} for p, t in targets.items()}, {}

        def node(self, target, kernel, trainable, fixed, config):
            return DiagKernel(kernel, trainable[target.path]["v"], scale=target.scale)

    frozen = {"query": {"kernel": jnp.zeros((4, 4))}}
    cfg = jaxlora.AdapterConfig("test-diag", rank=2, alpha=2, targets=("query",))
    adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    adapter.trainable["lowrank"]["query"]["v"] = jnp.array([1.0, 2.0])
    np.testing.assert_array_equal(jaxlora.merge(frozen, adapter, cfg)["query"]["kernel"], np.diag([1.0, 2.0, 0, 0]))
    assert jaxlora.count_params(adapter).lowrank == 2
