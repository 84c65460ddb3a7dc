"""Run inside a venv that has only ``pip install .`` (the core dependencies): the adapter library works
and imports none of the heavy optional packages.

    python -m venv /tmp/core && /tmp/core/bin/pip install . && (cd /tmp && /tmp/core/bin/python .../core_install_check.py)

Checks: ``jaxlora`` comes from the venv (not a checkout on sys.path); the optional packages are not even
installed there; ``init`` / ``apply`` (factored and merged) / ``merge`` run on a toy Flax model, the merged
parameters give the factored model's output; after all that, no heavy module is in ``sys.modules``.
"""

import importlib.util
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxlora
from jaxlora.nn import Dense

# Packages of the extras ([hf], [train], [theory], [bench], [test]) that the core must not need.
NOT_INSTALLED = ("transformers", "torch", "datasets", "tokenizers", "peft", "ml_collections", "matplotlib")
# Modules the core must not import (scipy and orbax do get installed, by jax and flax themselves).
NOT_IMPORTED = NOT_INSTALLED + ("scipy", "orbax", "huggingface_hub")


class Toy(nn.Module):
    @nn.compact
    def __call__(self, x, deterministic=True):
        h = jnp.tanh(Dense(16, name="query")(x, deterministic))
        return Dense(2, name="classifier")(Dense(16, name="value")(h, deterministic), deterministic)


def main() -> None:
    venv = os.path.realpath(sys.prefix)
    where = os.path.realpath(jaxlora.__file__)
    assert where.startswith(venv), f"jaxlora was imported from {where}, not from the venv {venv}"
    installed = [name for name in NOT_INSTALLED if importlib.util.find_spec(name) is not None]
    assert not installed, f"the core install brought optional packages: {installed}"

    model, x = Toy(), jnp.ones((4, 8))
    frozen = nn.unbox(model.init(jax.random.key(0), x)["params"])
    config = jaxlora.AdapterConfig("lora", rank=4, alpha=8, targets=("query", "value"), trainable=("classifier",))
    adapter = jaxlora.init(jax.random.key(1), frozen, config)
    # A nonzero B so that the merged and factored outputs differ from the frozen model's.
    adapter = adapter._replace(trainable=jax.tree.map(lambda a: a + 0.1, adapter.trainable))

    def loss(trainable):
        params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), config, mode="factored")
        return jnp.mean(model.apply({"params": params}, x) ** 2)

    grads = jax.grad(loss)(adapter.trainable)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads)), "non-finite adapter gradients"
    factored = model.apply({"params": jaxlora.apply(frozen, adapter, config, mode="factored")}, x)
    merged = model.apply({"params": jaxlora.merge(frozen, adapter, config)}, x)
    base = model.apply({"params": frozen}, x)
    np.testing.assert_allclose(merged, factored, rtol=1e-5, atol=1e-5)
    assert not np.allclose(merged, base), "the adapter changed nothing"

    imported = sorted(name for name in NOT_IMPORTED if name in sys.modules)
    assert not imported, f"the core library imported optional packages: {imported}"
    print(f"core install OK: jaxlora {jaxlora.__version__} from {where}; init/apply/merge ran; "
          f"none of {', '.join(NOT_IMPORTED)} imported")


if __name__ == "__main__":
    main()
