"""BERT and RoBERTa encoders in Flax Linen, parameter for parameter like transformers.

One set of modules serves both families; each family record's :class:`EncoderOptions`
says where they differ (RoBERTa's position ids start after the padding index, its
task models drop the pooler, and its classification head is a two-layer MLP on the
first token), and :class:`EncoderSpec` carries them to the modules.

Parameter tree of a sequence classifier (``prefix`` is ``"bert"`` or
``"roberta"``; the base model has the same tree without the prefix)::

    {prefix}/embeddings/{word,position,token_type}_embeddings/embedding
    {prefix}/embeddings/LayerNorm/{scale,bias}
    {prefix}/encoder/layer_{i}/attention/{query,key,value}/{kernel,bias}
    {prefix}/encoder/layer_{i}/attention/output/dense, .../attention/output/LayerNorm
    {prefix}/encoder/layer_{i}/intermediate/dense
    {prefix}/encoder/layer_{i}/output/dense, .../output/LayerNorm
    {prefix}/pooler/dense                                   (BERT only)
    classifier/{kernel,bias}                                (BERT)
    classifier/dense, classifier/out_proj                   (RoBERTa)

so an adapter target ``"query"`` or ``"attention/output/dense"`` reads like PEFT's.
Every linear layer is :class:`jaxlora.nn.Dense`, so factored adapters run inside.

>>> import jaxlora.models as jm
>>> module, params = jm.from_config(jm.tiny_config("roberta"), task="sequence_classification")
>>> sorted(params["classifier"]), "pooler" in params["roberta"]
(['dense', 'out_proj'], False)
>>> ids = jnp.array([[0, 5, 6, 2, 1]])
>>> module.apply({"params": params}, ids, (ids != 1).astype(jnp.int32)).shape
(1, 2)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlora.models import layers, stack
from jaxlora.models.family import HFType, InsertedLevel, ModelFamily, build_from_spec, get_family, register_family

Array = jax.Array

TASKS = ("base", "sequence_classification", "regression")


@dataclasses.dataclass(frozen=True)
class EncoderOptions:
    """What a BERT-style family does its own way (the ``module_options`` of its family record).

    Attributes:
      positions: ``"absolute"`` (``0..L-1``, BERT) or ``"after_padding"`` (RoBERTa: non-pad
        tokens counted from ``pad_token_id + 1``, see :func:`roberta_position_ids`).
      task_pooler: whether task models keep the pooler (RoBERTa's classifiers drop it).
      head: ``"pooled"`` (a dense classifier on the pooler output, BERT) or ``"first_token_mlp"``
        (RoBERTa's ``dense -> tanh -> out_proj`` on the first token).

    >>> get_family("roberta").module_options.positions, get_family("bert").module_options.head
    ('after_padding', 'pooled')
    """

    positions: str = "absolute"
    task_pooler: bool = True
    head: str = "pooled"

    def __post_init__(self):
        for field, value, known in (("positions", self.positions, ("absolute", "after_padding")),
                                    ("head", self.head, ("pooled", "first_token_mlp"))):
            if value not in known:
                raise ValueError(f"EncoderOptions.{field}={value!r}; choose one of {known}.")


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """The hashable numbers a BERT/RoBERTa module needs (read from an HF config).

    Build with :meth:`from_hf`; the modules never look at the HF config itself,
    so they stay hashable for ``jax.jit``.
    """

    family: str
    task: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_dropout: float
    attention_dropout: float
    classifier_dropout: float
    pad_token_id: int
    initializer_range: float
    num_labels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: str = "none"  # recompute each layer in the backward pass: "none", "full", "dots_saveable"
    scan_layers: bool = False  # run the layers as one nn.scan over stacked params (jaxlora.models.stack)
    options: EncoderOptions = EncoderOptions()  # the family's own ways (its record's module_options)

    @property
    def prefix(self) -> str:
        """Attribute name of the backbone inside the HF task model (the family record's)."""
        return get_family(self.family).prefix

    @property
    def layer_stack(self) -> str:
        """Path of the layer stack in the params (``layer_{i}`` under it when unrolled)."""
        return "encoder/layer" if self.task == "base" else f"{self.prefix}/encoder/layer"

    @property
    def has_pooler(self) -> bool:
        """Base models keep the pooler; task models when the family's options say so (RoBERTa's do not)."""
        return self.task == "base" or self.options.task_pooler

    @classmethod
    def from_hf(cls, config, family: str, task: str, num_labels: int, dtype, param_dtype) -> "EncoderSpec":
        """Read the fields from a transformers ``BertConfig``/``RobertaConfig``.

        >>> from jaxlora.models.hf_config import HFConfig
        >>> spec = EncoderSpec.from_hf(HFConfig.from_dict({"model_type": "bert"}), "bert", "base", 2, jnp.float32, jnp.float32)
        >>> spec.hidden_size, spec.num_layers, spec.prefix, spec.has_pooler
        (768, 12, 'bert', True)
        """
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not supported for {family}; choose one of {TASKS}.")
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                f"{config.num_attention_heads}."
            )
        classifier_dropout = getattr(config, "classifier_dropout", None)
        pad = config.pad_token_id if config.pad_token_id is not None else 0
        return cls(
            family=family,
            task=task,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            hidden_act=config.hidden_act,
            max_position_embeddings=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            layer_norm_eps=config.layer_norm_eps,
            hidden_dropout=config.hidden_dropout_prob,
            attention_dropout=config.attention_probs_dropout_prob,
            classifier_dropout=(
                classifier_dropout if classifier_dropout is not None else config.hidden_dropout_prob
            ),
            pad_token_id=int(pad),
            initializer_range=config.initializer_range,
            num_labels=num_labels,
            dtype=dtype,
            param_dtype=param_dtype,
            options=get_family(family).module_options or EncoderOptions(),
        )


class EncoderOutput(NamedTuple):
    """What the base model returns, as HF's ``BaseModelOutputWithPooling``."""

    last_hidden_state: Array
    pooler_output: Array | None


def roberta_position_ids(input_ids: Array, padding_idx: int) -> Array:
    """RoBERTa's positions: count non-pad tokens, offset by ``padding_idx``; pads stay at ``padding_idx``.

    >>> roberta_position_ids(jnp.array([[0, 5, 6, 1, 1]]), padding_idx=1)
    Array([[2, 3, 4, 1, 1]], dtype=int32)
    """
    mask = (input_ids != padding_idx).astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + padding_idx


class Embeddings(nn.Module):
    """Word + token-type + position embeddings, LayerNorm, dropout."""

    spec: EncoderSpec

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic):
        s = self.spec
        std = s.initializer_range
        words = layers.embed(s.vocab_size, s.hidden_size, std, ("vocab", "embed"), s.param_dtype, "word_embeddings")
        positions = layers.embed(
            s.max_position_embeddings, s.hidden_size, std, (None, "embed"), s.param_dtype, "position_embeddings"
        )
        types = layers.embed(
            s.type_vocab_size, s.hidden_size, std, (None, "embed"), s.param_dtype, "token_type_embeddings"
        )
        h = words(input_ids) + types(token_type_ids) + positions(position_ids)
        h = layers.layer_norm(s.layer_norm_eps, s.param_dtype, "LayerNorm")(h.astype(s.dtype))
        return layers.module_dropout(self, h, s.hidden_dropout, deterministic)


class AddNorm(nn.Module):
    """``LayerNorm(dropout(dense(x)) + residual)``: HF's ``BertSelfOutput`` / ``BertOutput``."""

    spec: EncoderSpec
    in_axis: str

    @nn.compact
    def __call__(self, x, residual, deterministic):
        s = self.spec
        h = layers.dense(s, s.hidden_size, (self.in_axis, "embed"), "dense")(x, deterministic=deterministic)
        h = layers.module_dropout(self, h, s.hidden_dropout, deterministic)
        return layers.layer_norm(s.layer_norm_eps, s.param_dtype, "LayerNorm")(h + residual)


class Attention(nn.Module):
    """Self-attention with ``query``/``key``/``value`` and the ``output`` add-norm as children."""

    spec: EncoderSpec

    @nn.compact
    def __call__(self, x, bias, deterministic):
        s = self.spec
        batch, length, _ = x.shape
        head_dim = s.hidden_size // s.num_heads

        def project(name):
            y = layers.dense(s, s.hidden_size, ("embed", "heads"), name)(x, deterministic=deterministic)
            return y.reshape(batch, length, s.num_heads, head_dim)

        q, k, v = project("query"), project("key"), project("value")
        context = layers.attend(self, q, k, v, bias, dropout_rate=s.attention_dropout, deterministic=deterministic)
        return AddNorm(s, "heads", name="output")(context, x, deterministic)


class Intermediate(nn.Module):
    """``act(dense(x))``: HF's ``BertIntermediate``."""

    spec: EncoderSpec

    @nn.compact
    def __call__(self, x, deterministic):
        s = self.spec
        h = layers.dense(s, s.intermediate_size, ("embed", "mlp"), "dense")(x, deterministic=deterministic)
        return layers.activation(s.hidden_act)(h)


class Layer(nn.Module):
    """One transformer block: attention, then the feed-forward add-norm."""

    spec: EncoderSpec

    @nn.compact
    def __call__(self, x, bias, deterministic):
        h = Attention(self.spec, name="attention")(x, bias, deterministic)
        inner = Intermediate(self.spec, name="intermediate")(h, deterministic)
        return AddNorm(self.spec, "mlp", name="output")(inner, h, deterministic)


class Encoder(nn.Module):
    """The stack ``layer_0 .. layer_{n-1}`` (one scanned ``layer`` with ``scan_layers``)."""

    spec: EncoderSpec

    @nn.compact
    def __call__(self, x, bias, deterministic):
        x, _ = stack.run_layers(Layer, self.spec, "layer", x, (bias,), deterministic=deterministic)
        return x


class Pooler(nn.Module):
    """``tanh(dense(h[:, 0]))``."""

    spec: EncoderSpec

    @nn.compact
    def __call__(self, h, deterministic):
        s = self.spec
        pooled = layers.dense(s, s.hidden_size, ("embed", None), "dense")(h[:, 0], deterministic=deterministic)
        return jnp.tanh(pooled)


def backbone(spec: EncoderSpec, input_ids, attention_mask, token_type_ids, position_ids, deterministic):
    """Embeddings, encoder and pooler, created in the calling compact module's scope.

    Shared by :class:`EncoderModel` (children under a prefix) and :class:`EncoderBase`
    (children at the top level, as AutoModel's unprefixed state dict).
    """
    s = spec
    batch, length = input_ids.shape
    if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
    if position_ids is None:
        if s.options.positions == "after_padding":
            position_ids = roberta_position_ids(input_ids, s.pad_token_id)
        else:
            position_ids = jnp.arange(length)[None, :]
    h = Embeddings(s, name="embeddings")(input_ids, token_type_ids, position_ids, deterministic)
    bias = layers.padding_bias(attention_mask, batch, length)
    h = Encoder(s, name="encoder")(h, bias, deterministic)
    pooled = Pooler(s, name="pooler")(h, deterministic) if s.has_pooler else None
    return EncoderOutput(h, pooled)


class EncoderModel(nn.Module):
    """HF's ``BertModel``/``RobertaModel``: embeddings, encoder, optional pooler."""

    spec: EncoderSpec

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, deterministic=True):
        return backbone(self.spec, input_ids, attention_mask, token_type_ids, position_ids, deterministic)


class RobertaClassificationHead(nn.Module):
    """``out_proj(dropout(tanh(dense(dropout(h[:, 0])))))``, as HF's."""

    spec: EncoderSpec

    @nn.compact
    def __call__(self, h, deterministic):
        s = self.spec
        x = layers.module_dropout(self, h[:, 0], s.classifier_dropout, deterministic)
        x = jnp.tanh(layers.dense(s, s.hidden_size, ("embed", None), "dense")(x, deterministic=deterministic))
        x = layers.module_dropout(self, x, s.classifier_dropout, deterministic)
        return layers.dense(s, s.num_labels, (None, "labels"), "out_proj")(x, deterministic=deterministic)


class EncoderClassifier(nn.Module):
    """``BertForSequenceClassification`` / ``RobertaForSequenceClassification``.

    Returns logits ``(batch, num_labels)``; regression is ``num_labels=1``.
    """

    spec: EncoderSpec
    config: Any = dataclasses.field(default=None, compare=False, hash=False)

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, deterministic=True):
        s = self.spec
        out = EncoderModel(s, name=s.prefix)(input_ids, attention_mask, token_type_ids, position_ids, deterministic)
        if s.options.head == "first_token_mlp":
            return RobertaClassificationHead(s, name="classifier")(out.last_hidden_state, deterministic)
        pooled = layers.module_dropout(self, out.pooler_output, s.classifier_dropout, deterministic)
        return layers.dense(s, s.num_labels, ("embed", "labels"), "classifier")(pooled, deterministic=deterministic)


class EncoderBase(nn.Module):
    """The bare backbone (HF ``AutoModel``), returning :class:`EncoderOutput`. Params are unprefixed."""

    spec: EncoderSpec
    config: Any = dataclasses.field(default=None, compare=False, hash=False)

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, deterministic=True):
        # The backbone's children sit at the top level: AutoModel's state dict has no prefix.
        return backbone(self.spec, input_ids, attention_mask, token_type_ids, position_ids, deterministic)


def build(spec: EncoderSpec, config=None) -> nn.Module:
    """The Linen module for ``spec.task``.

    >>> from jaxlora.models.testing import tiny_config
    >>> spec = EncoderSpec.from_hf(tiny_config("bert"), "bert", "sequence_classification", 2, jnp.float32, jnp.float32)
    >>> type(build(spec)).__name__, type(build(dataclasses.replace(spec, task="base"))).__name__
    ('EncoderClassifier', 'EncoderBase')
    """
    if spec.task == "base":
        return EncoderBase(spec, config=config)
    return EncoderClassifier(spec, config=config)


# The class defaults of transformers 5's BertConfig; RoBERTa's and XLM-R's differ in the special tokens.
_CONFIG_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "use_cache": True,
    "classifier_dropout": None,
    "is_decoder": False,
    "add_cross_attention": False,
    "bos_token_id": None,
    "eos_token_id": None,
    "tie_word_embeddings": True,
}
_ROBERTA_TOKENS = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2)

# What BERT and RoBERTa share: the modules above, the inputs, the names, the heads, PEFT's tasks.
_ENCODER_FAMILY = dict(
    tasks=TASKS,
    default_task="sequence_classification",
    build=build_from_spec(EncoderSpec, build),
    input_names=("input_ids", "attention_mask", "token_type_ids"),
    embedding_modules=("word_embeddings", "position_embeddings", "token_type_embeddings"),
    inserted_levels=(InsertedLevel("attention", "self", ("query", "key", "value")),),
    head_names=("classifier", "pooler"),
    classifier_head="classifier",
    peft_task_types={"sequence_classification": "SEQ_CLS", "regression": "SEQ_CLS", "base": "FEATURE_EXTRACTION"},
)

BERT = register_family(ModelFamily(
    name="bert",
    hf_types=(HFType("bert", "Bert", "BertTokenizer", _CONFIG_DEFAULTS),),
    prefix="bert",
    padded_embeddings=("word_embeddings",),
    module_options=EncoderOptions(),
    **_ENCODER_FAMILY,
))

ROBERTA = register_family(ModelFamily(
    name="roberta",
    hf_types=(
        HFType("roberta", "Roberta", "RobertaTokenizer", dict(_CONFIG_DEFAULTS, vocab_size=50265, **_ROBERTA_TOKENS)),
        HFType("xlm-roberta", "XLMRoberta", "XLMRobertaTokenizer", dict(_CONFIG_DEFAULTS, **_ROBERTA_TOKENS)),
    ),
    prefix="roberta",
    padded_embeddings=("word_embeddings", "position_embeddings"),
    module_options=EncoderOptions(positions="after_padding", task_pooler=False, head="first_token_mlp"),
    **_ENCODER_FAMILY,
))
