"""Every adapter method on a decoder with grouped-query attention: the causal-LM task's models.

Tiny Llama and Qwen2 (2 layers, hidden 32, 4 query heads, 2 KV heads: ``q_proj``/``o_proj`` are
32 x 32, ``k_proj``/``v_proj`` 32 x 16), trained with the completion-only loss of
:mod:`jaxlora.tasks.causal_lm`. Per method: the factored forward equals the merged one; gradients
reach exactly the adapter's trainable leaves, every one of them, and nothing frozen changes;
CondLoRA keeps the paper's form on the square q/o and needs the rectangular extension for GQA's k/v,
whose refusal names the module and its shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxlora
import jaxlora.models as jm
from jaxlora.models.testing import padded_batch
from jaxlora.tasks import causal_lm

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
METHODS = {
    "lora": dict(variant="lora", targets=ATTENTION),
    "bonly": dict(variant="bonly", targets=ATTENTION),
    "condlora-square-q-o": dict(variant="condlora", targets=("q_proj", "o_proj")),
    "condlora-rectangular": dict(variant="condlora", targets=ATTENTION, options={"rectangular": True}),
    "mtlora-ctcm": dict(variant="mtlora", targets=ATTENTION, options={"structure": "ctcm"}),
    "mtlora-all-linear": dict(variant="mtlora", targets="all-linear"),
}


@functools.lru_cache(maxsize=None)
def _decoder(model_type: str):
    """``(module, frozen params, batch)``: a GQA decoder and a right-padded batch with a completion mask."""
    module, params = jm.from_config(jm.tiny_config(model_type), task="causal_lm")
    ids, mask = padded_batch(vocab=99, pad=0, lengths=(9, 6, 4), length=9)
    completion = (np.arange(9)[None, :] >= np.array([[5], [3], [2]])) & (mask == 1)
    batch = {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask, jnp.int32),
             "token_type_ids": jnp.asarray(completion, jnp.int32), "example_mask": jnp.ones(3, jnp.int32)}
    return module, params, batch


@pytest.fixture(params=["llama", "qwen2"])
def decoder(request):
    """Llama, and Qwen2 (biases on q/k/v), both with grouped-query attention."""
    return _decoder(request.param)


def _config(name: str) -> jaxlora.AdapterConfig:
    return jaxlora.AdapterConfig(rank=4, alpha=8.0, trainable=(), **METHODS[name])


def _logits(module, params, batch):
    return module.apply({"params": params}, batch["input_ids"], batch["attention_mask"])


def _moved(adapter: jaxlora.Adapter, seed: int = 3) -> jaxlora.Adapter:
    """The adapter with every trainable leaf off its (partly zero) init, so the delta is not zero."""
    leaves, treedef = jax.tree.flatten(adapter.trainable)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    moved = [leaf + 0.2 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]
    return adapter._replace(trainable=jax.tree.unflatten(treedef, moved))


def test_the_decoder_has_grouped_query_attention(decoder):
    _, params, _ = decoder
    shapes = {name: tuple(np.shape(leaf["kernel"])) for name, leaf in _find(params, "self_attn").items()}
    assert shapes == {"q_proj": (32, 32), "k_proj": (32, 16), "v_proj": (32, 16), "o_proj": (32, 32)}


def _find(tree, name):
    """The first subtree called ``name`` (depth first)."""
    if isinstance(tree, dict):
        if name in tree:
            return tree[name]
        for value in tree.values():
            found = _find(value, name)
            if found is not None:
                return found
    return None


@pytest.mark.parametrize("name", sorted(METHODS))
def test_factored_equals_merged_on_the_decoder(decoder, name):
    module, frozen, batch = decoder
    cfg = _config(name)
    adapter = _moved(jaxlora.init(jax.random.key(0), frozen, cfg))
    factored = _logits(module, jaxlora.apply(frozen, adapter, cfg, mode="factored"), batch)
    merged = _logits(module, jaxlora.merge(frozen, adapter, cfg), batch)
    base = _logits(module, frozen, batch)
    scale = float(jnp.abs(merged).max())
    assert float(jnp.abs(factored - merged).max()) <= 1e-5 * scale
    assert float(jnp.abs(merged - base).max()) > 1e-3 * scale  # the adapter changes the logits


@pytest.mark.parametrize("name", ["lora", "bonly", "condlora-rectangular", "mtlora-ctcm"])
def test_gradients_reach_every_adapter_leaf_and_nothing_else(name):
    """On the Llama (one decoder is enough: each step compiles); CondLoRA's q/o are the paper's square form."""
    module, frozen, batch = _decoder("llama")
    cfg = _config(name)
    adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    frozen_before = jax.tree.map(np.array, frozen)

    def loss(trainable):
        params = jaxlora.apply(frozen, adapter._replace(trainable=trainable), cfg)
        return causal_lm.completion_loss(_logits(module, params, batch), batch)

    opt = optax.adam(1e-2)

    @jax.jit
    def step(trainable, state):
        grads = jax.grad(loss)(trainable)
        updates, state = opt.update(grads, state, trainable)
        return optax.apply_updates(trainable, updates), state, grads

    trainable, state = adapter.trainable, opt.init(adapter.trainable)
    losses = []
    for _ in range(3):
        losses.append(float(loss(trainable)))
        trainable, state, grads = step(trainable, state)
    assert jax.tree.structure(grads) == jax.tree.structure(adapter.trainable)  # only the adapter is differentiated
    assert not jax.tree.leaves(grads.get("full", {}))  # no head trains: the LM head stays frozen
    # After a first step, every trainable leaf (zero-initialised ones included) gets a gradient.
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["lowrank"]))
    assert losses[-1] < losses[0]
    for before, after in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen)):
        np.testing.assert_array_equal(before, np.asarray(after))
    fixed_again = jaxlora.init(jax.random.key(0), frozen, cfg).fixed  # B-only's frozen a: the same draw
    for a, b in zip(jax.tree.leaves(adapter.fixed), jax.tree.leaves(fixed_again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_condlora_needs_the_rectangular_extension_for_gqa_key_value(decoder):
    _, frozen, _ = decoder
    with pytest.raises(ValueError, match=r"'k_proj' modules have shape \(32, 16\).*rectangular=True"):
        jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig("condlora", rank=4, targets=ATTENTION))


def test_condlora_shares_one_map_per_module_type_across_layers(decoder):
    """The paper's count on square q/o (2 r d each), the extension's r (d_out + d_in) on k/v; depth-free."""
    _, frozen, _ = decoder
    adapter = jaxlora.init(jax.random.key(0), frozen, _config("condlora-rectangular"))
    shapes = {group: {k: v.shape for k, v in leaves.items()} for group, leaves in adapter.trainable["lowrank"].items()}
    assert shapes == {
        "q_proj": {"theta_a": (4, 32), "theta_b": (4, 32)}, "o_proj": {"theta_a": (4, 32), "theta_b": (4, 32)},
        "k_proj": {"theta_a": (4, 16), "theta_b": (4, 32)}, "v_proj": {"theta_a": (4, 16), "theta_b": (4, 32)},
    }
    factors = jaxlora.to_lora_factors(frozen, _moved(adapter), _config("condlora-rectangular"))
    by_type = {}
    for path, f in factors.items():
        by_type.setdefault(path[-1], []).append(f)
    assert {k: len(v) for k, v in by_type.items()} == {name: 2 for name in ATTENTION}  # both layers adapted
    assert not np.allclose(by_type["k_proj"][0].a, by_type["k_proj"][1].a)  # each from its own layer's weight
