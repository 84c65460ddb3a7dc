"""remat=True (gradient checkpointing): same numbers, fewer residuals kept for the backward pass.

The residuals are counted at the JAX level (what autodiff saves between the forward and backward
passes). XLA:CPU's buffer assignment does not turn this into a smaller temp allocation (measured on
MiniLM, docs/BENCHMARKS.md); on GPU/TPU it does.
"""

import contextlib
import io
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.ad_checkpoint import print_saved_residuals

import jaxlora
from jaxlora import models


def _loss_and_grads(module, params, cfg, ids, mask):
    adapter = jaxlora.init(jax.random.key(0), params, cfg)

    def loss_fn(trainable):
        p = jaxlora.apply(params, adapter._replace(trainable=trainable), cfg, mode="factored")
        logits = module.apply({"params": p}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(3)})
        if logits.ndim == 3:  # causal LM: next-token loss
            return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1])).mean()

    return jax.jit(jax.value_and_grad(loss_fn))(adapter.trainable), _residual_bytes(loss_fn, adapter.trainable)


def _residual_bytes(fn, *args) -> int:
    """Bytes autodiff saves for the backward pass, arguments and constants (weights) left out.

    ``print_saved_residuals`` is JAX's public view of the residuals; it prints one
    ``dtype[shape] reason`` line per residual.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(fn, *args)
    total = 0
    for line in out.getvalue().splitlines():
        match = re.match(r"(\w+)\[([\d,]*)\]\s+(.*)", line)
        if match is None or "argument" in match[3] or "constant" in match[3]:
            continue
        size = math.prod(int(d) for d in match[2].split(",") if d)
        total += size * _ITEMSIZE.get(match[1], 4)
    assert total > 0, out.getvalue()
    return total


_ITEMSIZE = {"bool": 1, "u8": 1, "i8": 1, "bf16": 2, "f16": 2, "u16": 2}


@pytest.mark.parametrize("family,task", [("bert", "sequence_classification"), ("llama", "causal_lm")])
def test_remat_changes_memory_not_numbers(family, task):
    config = models.tiny_config(family, num_hidden_layers=3)
    ids = jax.random.randint(jax.random.key(1), (2, 48), 3, 99)
    mask = jnp.ones_like(ids).at[1, 40:].set(0)
    cfg = jaxlora.AdapterConfig("lora", rank=4, alpha=8, targets="all-linear", trainable=())

    plain, params = models.from_config(config, task=task, num_labels=2, seed=0)
    remat, params_remat = models.from_config(config, task=task, num_labels=2, seed=0, remat=True)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, params_remat))

    (loss, grads), mem = _loss_and_grads(plain, params, cfg, ids, mask)
    (loss_r, grads_r), mem_r = _loss_and_grads(remat, params, cfg, ids, mask)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_r, grads)
    # Dropout is on, so equal gradients also show the recomputed masks are the same draws.
    assert mem_r < 0.5 * mem, (mem_r, mem)


def test_from_pretrained_passes_remat_to_the_module(minilm_path):
    with pytest.warns(models.CheckpointWarning, match="classifier"):  # the fresh head, as always
        module, _ = models.from_pretrained(minilm_path, task="sequence_classification", num_labels=2, remat=True)
    assert module.spec.remat
