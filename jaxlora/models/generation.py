"""Text generation with jaxlora's decoder models: one jitted prefill, then a KV-cache decode loop.

:func:`generate` takes a left-padded batch of prompts and returns the new
tokens. It runs as one compiled function:

1. **Prefill.** The prompts go through the model once, writing their keys and
   values into a fixed-size :class:`~jaxlora.models.llama.KVCache`; positions
   count real tokens only (:func:`~jaxlora.models.position_ids_from_mask`), so
   a left-padded row computes what it would alone.
2. **Decode.** A ``lax.while_loop`` feeds one token per step, writing one
   cache slot each time, until ``max_new_tokens`` are out or every row has
   emitted ``eos_token_id`` (after which a row repeats it, as padding).

The shapes are fixed by buckets, not by the request: prompts are left-padded
to a multiple of :data:`PROMPT_BUCKET` and the cache holds a multiple of
:data:`NEW_TOKENS_BUCKET` new tokens, while ``max_new_tokens``, the
temperature and ``top_p`` are traced values. So a server or an evaluation loop
compiles once per (batch, bucket) pair, never per token or per prompt length.

Adapters work either way: ``params`` may be ``jaxlora.apply(..., mode="factored")``
(the low-rank product runs inside each layer) or merged plain arrays.

>>> import jaxlora, numpy as np
>>> module, params = jaxlora.models.from_config(jaxlora.models.tiny_config("llama"))
>>> tokens = generate(module, params, np.array([[0, 5, 6], [7, 8, 9]]), np.array([[0, 1, 1], [1, 1, 1]]),
...                   max_new_tokens=4)
>>> tokens.shape
(2, 4)
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlora.models import llama

PROMPT_BUCKET = 32
NEW_TOKENS_BUCKET = 32


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def filter_logits(logits: jax.Array, top_k: int | None = None, top_p: jax.Array | float | None = None) -> jax.Array:
    """Logits with every token outside the top ``k`` / the ``top_p`` nucleus set to ``-inf``.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``
    (the most likely token is always kept), as transformers' ``TopPLogitsWarper`` keeps it.

    >>> filter_logits(jnp.log(jnp.array([[0.5, 0.3, 0.2]])), top_p=0.7)
    Array([[-0.6931472, -1.2039728,       -inf]], dtype=float32)
    """
    logits = logits.astype(jnp.float32)
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        # A token stays when the mass of the tokens ranked above it is still short of top_p.
        before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.where(before < top_p, ordered, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _choose(logits, key, temperature, top_p, *, sample: bool, top_k: int | None, use_top_p: bool):
    if not sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits / temperature, top_k, top_p if use_top_p else None)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("module", "new_slots", "sample", "top_k", "use_top_p"))
def _generate(module, params, ids, mask, max_new, temperature, top_p, rng, eos, *, new_slots, sample, top_k, use_top_p):
    batch, prompt = ids.shape
    choose = functools.partial(_choose, sample=sample, top_k=top_k, use_top_p=use_top_p)
    cache = llama.init_cache(module.spec, batch, prompt + new_slots)
    slot_mask = jnp.concatenate([mask, jnp.ones((batch, new_slots), mask.dtype)], axis=1)
    positions = llama.position_ids_from_mask(mask)
    logits, cache = module.apply({"params": params}, ids, slot_mask, position_ids=positions, cache=cache)
    first = choose(logits[:, -1], jax.random.fold_in(rng, 0), temperature, top_p)
    out = jnp.full((batch, new_slots), eos[0], jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, eos)
    next_position = positions[:, -1] + 1  # the last column is real in every left-padded row

    def keep_going(state):
        step, _, _, done = state
        return (step < max_new) & ~jnp.all(done)

    def step_once(state):
        step, out, cache, done = state
        token = out[:, step - 1]
        logits, cache = module.apply(
            {"params": params}, token[:, None], slot_mask, position_ids=(next_position + step - 1)[:, None], cache=cache
        )
        chosen = choose(logits[:, -1], jax.random.fold_in(rng, step), temperature, top_p)
        chosen = jnp.where(done, eos[0], chosen)
        return step + 1, out.at[:, step].set(chosen), cache, done | jnp.isin(chosen, eos)

    _, out, _, _ = jax.lax.while_loop(keep_going, step_once, (jnp.int32(1), out, cache, done))
    return out


def _check_left_padded(mask: np.ndarray) -> None:
    if not mask[:, -1].all() or (np.diff(mask, axis=1) < 0).any():
        raise ValueError(
            "generate needs left-padded prompts: each attention_mask row must be 0s then 1s, ending in a real "
            "token. Tokenize with tokenizer.padding_side = 'left'."
        )


def generate(
    module,
    params,
    input_ids,
    attention_mask=None,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: jax.Array | None = None,
    eos_token_id: int | Sequence[int] | None = None,
) -> jax.Array:
    """Continue each prompt by ``max_new_tokens`` tokens: greedy, or sampled when ``temperature > 0``.

    Args:
      module, params: a causal-LM model (``task="causal_lm"``) and its params, plain, merged or
        factored (``jaxlora.apply(frozen, adapter, cfg, mode="factored")``).
      input_ids: ``(batch, length)`` prompts, left-padded.
      attention_mask: ``(batch, length)``, 1 for real tokens; ``None`` means no padding.
      max_new_tokens: how many tokens to produce per row.
      temperature: 0 picks the most likely token (greedy); above 0 samples from
        ``softmax(logits / temperature)`` restricted by ``top_k`` and ``top_p``.
      top_k: keep only the ``k`` most likely tokens when sampling.
      top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p``.
      rng: a ``jax.random`` key; needed when sampling, the same key gives the same tokens.
      eos_token_id: token id(s) that end a row; the row repeats the (first) id afterwards, and
        generation stops early once every row has ended.

    Returns:
      ``(batch, max_new_tokens)`` int32 new tokens (the prompt is not repeated).

    >>> from jaxlora.models import from_config, tiny_config
    >>> module, params = from_config(tiny_config("llama"))
    >>> ids, mask = np.array([[0, 5, 6], [7, 8, 9]]), np.array([[0, 1, 1], [1, 1, 1]])
    >>> tokens = generate(module, params, ids, mask, max_new_tokens=4, temperature=0.7, top_p=0.9,
    ...                   rng=jax.random.key(0))
    >>> tokens.shape
    (2, 4)
    """
    spec = module.spec
    if getattr(spec, "task", None) != "causal_lm":
        raise ValueError(
            f"generate needs a causal LM (task='causal_lm'); this module's task is {getattr(spec, 'task', None)!r}."
        )
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, length); got shape {ids.shape}.")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}; they must match.")
    _check_left_padded(mask)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}.")
    sample = temperature > 0
    if sample and rng is None:
        raise ValueError("Sampling (temperature > 0) needs rng=jax.random.key(seed).")
    if top_k is not None and not 1 <= top_k <= spec.vocab_size:
        raise ValueError(f"top_k must be between 1 and the vocabulary size {spec.vocab_size}, got {top_k}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    eos = np.atleast_1d(np.asarray(-1 if eos_token_id is None else eos_token_id, np.int32))

    prompt = _round_up(ids.shape[1], PROMPT_BUCKET)
    pad = prompt - ids.shape[1]
    ids = np.pad(ids.astype(np.int32), ((0, 0), (pad, 0)))
    mask = np.pad(mask.astype(np.int32), ((0, 0), (pad, 0)))
    out = _generate(
        module,
        params,
        jnp.asarray(ids),
        jnp.asarray(mask),
        jnp.int32(max_new_tokens),
        jnp.float32(temperature if sample else 1.0),
        jnp.float32(1.0 if top_p is None else top_p),
        jax.random.key(0) if rng is None else rng,
        jnp.asarray(eos),
        new_slots=_round_up(max_new_tokens, NEW_TOKENS_BUCKET),
        sample=sample,
        top_k=top_k if sample else None,
        use_top_p=sample and top_p is not None,
    )
    return out[:, :max_new_tokens]
