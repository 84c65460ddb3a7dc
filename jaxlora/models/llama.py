"""The Llama family (Llama 2/3, Qwen2-style qkv biases) in Flax Linen, as transformers computes it.

RMSNorm, rotary position embeddings (:mod:`~jaxlora.models.rope`), grouped-query
attention, a SwiGLU feed-forward, and tied or untied input/output embeddings.
Parameter tree of a causal LM::

    model/embed_tokens/embedding
    model/layers_{i}/input_layernorm/scale
    model/layers_{i}/self_attn/{q_proj,k_proj,v_proj,o_proj}/kernel   (+ bias if configured)
    model/layers_{i}/post_attention_layernorm/scale
    model/layers_{i}/mlp/{gate_proj,up_proj,down_proj}/kernel
    model/norm/scale
    lm_head/kernel                         (absent when the embeddings are tied)

``task="sequence_classification"`` puts ``score/kernel`` in place of ``lm_head``
and reads the logits at the last non-padding token, as
``LlamaForSequenceClassification`` does.

Position ids: when none are given, positions are ``0..L-1`` for every row,
exactly what transformers' ``LlamaModel.forward`` does. With left padding pass
:func:`~jaxlora.models.rope.position_ids_from_mask` (what ``generate`` does) to
start each row at 0. Decoding passes a :class:`~jaxlora.models.kv_cache.KVCache`
as ``cache=`` (see :mod:`~jaxlora.models.kv_cache`).

>>> import jaxlora.models as jm
>>> module, params = jm.from_config(jm.tiny_config("llama"), task="causal_lm")
>>> ids = jnp.array([[1, 5, 6, 7]])
>>> module.apply({"params": params}, ids, jnp.ones_like(ids)).shape   # (batch, length, vocab)
(1, 4, 99)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlora.models import layers, stack
from jaxlora.models.family import HFType, ModelFamily, build_from_spec, register_family
# generation.py reaches init_cache and position_ids_from_mask through this module.
from jaxlora.models.kv_cache import KVCache, cached_attention_bias, init_cache  # noqa: F401
from jaxlora.models.rope import apply_rotary, position_ids_from_mask, rope_settings, rotary_tables  # noqa: F401

Array = jax.Array

TASKS = ("base", "causal_lm", "sequence_classification", "regression")


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """The hashable numbers a Llama module needs (read from an HF config by :meth:`from_hf`)."""

    family: str
    task: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    hidden_act: str
    rms_norm_eps: float
    attention_dropout: float
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    rope: tuple  # sorted (key, value) pairs of rope_settings()
    pad_token_id: int | None
    initializer_range: float
    num_labels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: str = "none"  # recompute each layer in the backward pass: "none", "full", "dots_saveable"
    scan_layers: bool = False  # run the layers as one nn.scan over stacked params (jaxlora.models.stack)

    @property
    def prefix(self) -> str:
        return "model"

    @property
    def layer_stack(self) -> str:
        """Path of the layer stack in the params (``layers_{i}`` under it when unrolled)."""
        return "layers" if self.task == "base" else "model/layers"

    @classmethod
    def from_hf(cls, config, family: str, task: str, num_labels: int, dtype, param_dtype) -> "DecoderSpec":
        """Read the fields from a ``LlamaConfig`` (or ``Qwen2Config``).

        >>> from jaxlora.models.hf_config import HFConfig
        >>> spec = DecoderSpec.from_hf(HFConfig.from_dict({"model_type": "llama"}), "llama", "causal_lm", 2, jnp.float32, jnp.float32)
        >>> spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.qkv_bias
        (32, 32, 128, False)
        """
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not supported for {family}; choose one of {TASKS}.")
        model_type = getattr(config, "model_type", "llama")
        if getattr(config, "use_sliding_window", False):
            raise ValueError("Sliding-window attention (use_sliding_window=True) is not supported by jaxlora.")
        if model_type == "qwen2":
            qkv_bias, o_bias, mlp_bias = True, False, False
        else:
            qkv_bias = o_bias = bool(getattr(config, "attention_bias", False))
            mlp_bias = bool(getattr(config, "mlp_bias", False))
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        if heads % kv_heads:
            raise ValueError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}.")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        pad = config.pad_token_id
        return cls(
            family=family,
            task=task,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            hidden_act=config.hidden_act,
            rms_norm_eps=config.rms_norm_eps,
            attention_dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            rope=tuple(sorted(rope_settings(config).items())),
            pad_token_id=None if pad is None else int(pad),
            initializer_range=config.initializer_range,
            num_labels=num_labels,
            dtype=dtype,
            param_dtype=param_dtype,
        )


class RMSNorm(nn.Module):
    """``scale * (x / rms(x))`` with the statistics in float32, as ``LlamaRMSNorm``."""

    eps: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",))
        scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return scale * h.astype(x.dtype)


class SelfAttention(nn.Module):
    """``q_proj``/``k_proj``/``v_proj``/``o_proj`` with RoPE and grouped-query attention."""

    spec: DecoderSpec

    @nn.compact
    def __call__(self, x, bias, cos, sin, deterministic, cache=None):
        """``cache``: this layer's ``(keys, values, index)``; then returns ``(output, (keys, values))``."""
        s = self.spec
        batch, length, _ = x.shape
        q_width, kv_width = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        q = layers.dense(s, q_width, ("embed", "heads"), "q_proj", s.qkv_bias)(x, deterministic=deterministic)
        k = layers.dense(s, kv_width, ("embed", "kv"), "k_proj", s.qkv_bias)(x, deterministic=deterministic)
        v = layers.dense(s, kv_width, ("embed", "kv"), "v_proj", s.qkv_bias)(x, deterministic=deterministic)
        q = apply_rotary(q.reshape(batch, length, s.num_heads, s.head_dim), cos, sin)
        k = apply_rotary(k.reshape(batch, length, s.num_kv_heads, s.head_dim), cos, sin)
        v = v.reshape(batch, length, s.num_kv_heads, s.head_dim)
        if cache is not None:
            cached_k, cached_v, index = cache
            k = jax.lax.dynamic_update_slice(cached_k, k.astype(cached_k.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cached_v, v.astype(cached_v.dtype), (0, index, 0, 0))
        context = layers.attend(self, q, k, v, bias, dropout_rate=s.attention_dropout, deterministic=deterministic)
        out = layers.dense(s, s.hidden_size, ("heads", "embed"), "o_proj", s.o_bias)(context, deterministic=deterministic)
        return out if cache is None else (out, (k, v))


class MLP(nn.Module):
    """SwiGLU: ``down_proj(act(gate_proj(x)) * up_proj(x))``."""

    spec: DecoderSpec

    @nn.compact
    def __call__(self, x, deterministic):
        s = self.spec
        gate = layers.dense(s, s.intermediate_size, ("embed", "mlp"), "gate_proj", s.mlp_bias)(x, deterministic=deterministic)
        up = layers.dense(s, s.intermediate_size, ("embed", "mlp"), "up_proj", s.mlp_bias)(x, deterministic=deterministic)
        h = layers.activation(s.hidden_act)(gate) * up
        return layers.dense(s, s.hidden_size, ("mlp", "embed"), "down_proj", s.mlp_bias)(h, deterministic=deterministic)


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    spec: DecoderSpec

    @nn.compact
    def __call__(self, x, bias, cos, sin, deterministic, cache=None):
        s = self.spec
        h = RMSNorm(s.rms_norm_eps, s.param_dtype, name="input_layernorm")(x)
        attended = SelfAttention(s, name="self_attn")(h, bias, cos, sin, deterministic, cache)
        if cache is not None:
            attended, cache = attended
        x = x + attended
        h = RMSNorm(s.rms_norm_eps, s.param_dtype, name="post_attention_layernorm")(x)
        x = x + MLP(s, name="mlp")(h, deterministic)
        return x if cache is None else (x, cache)


def backbone(spec: DecoderSpec, input_ids, attention_mask, position_ids, deterministic, cache=None):
    """Embedding, decoder layers and final norm, created in the calling compact module's scope.

    With a :class:`KVCache` returns ``(hidden, cache)``, the cache holding the new tokens.
    """
    s = spec
    batch, length = input_ids.shape
    table = layers.embed(
        s.vocab_size, s.hidden_size, s.initializer_range, ("vocab", "embed"), s.param_dtype, "embed_tokens"
    )
    h = table(input_ids).astype(s.dtype)
    if position_ids is None:
        start = 0 if cache is None else cache.index
        position_ids = (start + jnp.arange(length))[None, :]
    if cache is None:
        bias = layers.causal_padding_bias(attention_mask, batch, length)
    else:
        if attention_mask is None:
            attention_mask = jnp.ones((batch, cache.keys[0].shape[1]), jnp.int32)
        bias = cached_attention_bias(attention_mask, cache.index, length)
    cos, sin = rotary_tables(s.head_dim, dict(s.rope), position_ids, s.dtype)
    per_layer = None
    if cache is not None:
        per_layer = [(cache.keys[i], cache.values[i], cache.index) for i in range(s.num_layers)]
        s = dataclasses.replace(s, remat="none")  # decoding has no backward pass to save memory for
    h, written = stack.run_layers(DecoderLayer, s, "layers", h, (bias, cos, sin), per_layer,
                                  deterministic=deterministic)
    h = RMSNorm(s.rms_norm_eps, s.param_dtype, name="norm")(h)
    if cache is None:
        return h
    keys, values = zip(*written)
    return h, KVCache(tuple(keys), tuple(values), cache.index + length)


class DecoderModel(nn.Module):
    """HF's ``LlamaModel`` under the ``model`` prefix of a task model."""

    spec: DecoderSpec

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, position_ids=None, deterministic=True, cache=None):
        return backbone(self.spec, input_ids, attention_mask, position_ids, deterministic, cache)


def last_token_index(input_ids: Array, pad_token_id: int | None) -> Array:
    """Index of each row's rightmost non-pad token (HF's sequence-classification pooling)."""
    if pad_token_id is None:
        return jnp.full((input_ids.shape[0],), input_ids.shape[1] - 1)
    positions = jnp.arange(input_ids.shape[1])
    return jnp.argmax(positions * (input_ids != pad_token_id), axis=-1)


class DecoderForTask(nn.Module):
    """``LlamaForCausalLM`` (logits ``(batch, length, vocab)``) or ``LlamaForSequenceClassification``.

    Call as ``module.apply({"params": p}, input_ids, attention_mask, position_ids=None, deterministic=True)``;
    a causal LM also takes ``cache=`` (a :class:`KVCache`) and then returns ``(logits, cache)``.
    """

    spec: DecoderSpec
    config: Any = dataclasses.field(default=None, compare=False, hash=False)

    @nn.compact
    def __call__(
        self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, deterministic=True, cache=None
    ):
        del token_type_ids  # accepted so every jaxlora model takes the same arguments
        s = self.spec
        model = DecoderModel(s, name="model")
        if cache is not None and s.task != "causal_lm":
            raise ValueError(f"A KV cache is for decoding with a causal LM; this model's task is {s.task!r}.")
        h = model(input_ids, attention_mask, position_ids, deterministic, cache)
        if s.task == "causal_lm":
            if cache is not None:
                h, cache = h
            if s.tie_word_embeddings:
                table = nn.unbox(model.variables["params"]["embed_tokens"]["embedding"])
                logits = jnp.einsum("bld,vd->blv", h, table.astype(h.dtype))
            else:
                logits = layers.dense(s, s.vocab_size, ("embed", "vocab"), "lm_head", False)(
                    h, deterministic=deterministic
                )
            return logits if cache is None else (logits, cache)
        # Scoring every position then picking one would waste work: pick the hidden state first.
        last = last_token_index(input_ids, s.pad_token_id)
        pooled = h[jnp.arange(h.shape[0]), last]
        return layers.dense(s, s.num_labels, ("embed", "labels"), "score", False)(pooled, deterministic=deterministic)


class DecoderBase(nn.Module):
    """The bare ``LlamaModel`` (HF ``AutoModel``), returning the last hidden state; params unprefixed."""

    spec: DecoderSpec
    config: Any = dataclasses.field(default=None, compare=False, hash=False)

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, deterministic=True):
        del token_type_ids
        return backbone(self.spec, input_ids, attention_mask, position_ids, deterministic)


def build(spec: DecoderSpec, config=None) -> nn.Module:
    """The Linen module for ``spec.task``."""
    if spec.task == "base":
        return DecoderBase(spec, config=config)
    return DecoderForTask(spec, config=config)


def complete_config(model_type: str, fields: dict[str, Any]) -> None:
    """Fields LlamaConfig / Qwen2Config compute from others when ``config.json`` leaves them out."""
    if "num_attention_heads" not in fields:  # a model type with no class defaults: nothing to derive from
        return
    if fields.get("num_key_value_heads") is None:
        fields["num_key_value_heads"] = fields["num_attention_heads"]
    if "head_dim" in fields and fields["head_dim"] is None:  # LlamaConfig has the field, Qwen2Config not
        fields["head_dim"] = fields["hidden_size"] // fields["num_attention_heads"]
    if model_type == "qwen2":
        if not fields["use_sliding_window"]:
            fields["sliding_window"] = None
        if fields["layer_types"] is None:
            sliding = fields["sliding_window"] is not None
            fields["layer_types"] = [
                "sliding_attention" if sliding and i >= fields["max_window_layers"] else "full_attention"
                for i in range(fields["num_hidden_layers"])
            ]


# Class defaults shared by transformers 5's LlamaConfig and Qwen2Config.
_DECODER_DEFAULTS: dict[str, Any] = {
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "tie_word_embeddings": False,
    "rope_parameters": None,
    "attention_dropout": 0.0,
}
_LLAMA_DEFAULTS = dict(
    _DECODER_DEFAULTS, vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048, pad_token_id=None,
    bos_token_id=1, eos_token_id=2, pretraining_tp=1, attention_bias=False, mlp_bias=False, head_dim=None,
)
_QWEN2_DEFAULTS = dict(
    _DECODER_DEFAULTS, vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768, use_sliding_window=False,
    sliding_window=4096, max_window_layers=28, layer_types=None, pad_token_id=None, bos_token_id=None,
    eos_token_id=None,
)

# Qwen2 is a Llama with qkv biases (DecoderSpec.from_hf reads them from the model type): same
# modules, names, inputs and heads, so it is one more model type of this family, not a family.
# Llama's tokenizer is left to AutoTokenizer: it swaps LlamaTokenizer for a byte-level backend on
# some checkpoints.
LLAMA = register_family(ModelFamily(
    name="llama",
    hf_types=(
        HFType("llama", "Llama", None, _LLAMA_DEFAULTS),
        HFType("qwen2", "Qwen2", "Qwen2Tokenizer", _QWEN2_DEFAULTS),
    ),
    prefix="model",
    tasks=TASKS,
    default_task="causal_lm",
    build=build_from_spec(DecoderSpec, build),
    input_names=("input_ids", "attention_mask"),
    embedding_modules=("embed_tokens",),
    padded_embeddings=("embed_tokens",),
    head_names=("lm_head", "score"),
    classifier_head="score",
    peft_task_types={
        "causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS", "regression": "SEQ_CLS",
        "base": "FEATURE_EXTRACTION",
    },
    complete_config=complete_config,
))
