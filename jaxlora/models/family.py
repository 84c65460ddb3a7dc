"""What jaxlora knows about a model family, in one record, and the registry of records.

A *family* is one set of Linen modules plus the rules that tie them to
transformers: which ``model_type`` values it reads (``xlm-roberta`` is a
RoBERTa, ``qwen2`` a Llama with qkv biases), what transformers calls its classes,
how its parameter names map to HF's, which inputs it takes, and which PEFT
``task_type`` each task exports as. :class:`ModelFamily` holds all of it; the
family's own module file registers it (``bert.py`` registers ``"bert"`` and
``"roberta"``, ``llama.py`` ``"llama"``). Loading, saving, checkpoint renaming,
tokenizer choice, the training loop and the PEFT exporter read the record and
nothing else, so a new family is one file: its modules (or a reuse of existing
ones), one :func:`register_family` call, and its parity test.

>>> import jaxlora.models as jm
>>> get_family("roberta").prefix
'roberta'
>>> get_family(jm.tiny_config("qwen2")).name        # a transformers config, by its model_type
'llama'
>>> get_family(jm.build_module(jm.tiny_config("bert"), "base")).input_names
('input_ids', 'attention_mask', 'token_type_ids')
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

from jaxlora.models.stack import remat_policy
from jaxlora.util.text import listing


class HFType(NamedTuple):
    """One transformers ``model_type`` a family reads.

    ``class_stem`` names its classes (``"XLMRoberta"`` -> ``XLMRobertaForSequenceClassification``);
    ``tokenizer_class`` is the tokenizer transformers registers for it, or ``None`` to leave the
    choice to ``AutoTokenizer``; ``config_defaults`` are the class defaults of its transformers
    config (what a ``config.json`` may leave out).
    """

    model_type: str
    class_stem: str
    tokenizer_class: str | None = None
    config_defaults: Mapping[str, Any] = {}


class InsertedLevel(NamedTuple):
    """A module level HF has and jaxlora drops: HF's ``{parent}.{name}.{child}`` is our ``{parent}/{child}``.

    BERT's ``attention.self.query`` is ``attention/query``:
    ``InsertedLevel("attention", "self", ("query", "key", "value"))``.
    """

    parent: str
    name: str
    children: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """Everything the library needs to know about one model family.

    Attributes:
      name: the family's name (``module.spec.family``), e.g. ``"bert"``.
      hf_types: the transformers model types it reads, each with its class stem.
      prefix: attribute name of the backbone inside HF task models (``base_model_prefix``).
      tasks: the tasks its modules implement; ``default_task`` is used when none is asked for.
      build: ``build(config, family_name, task, dtype, param_dtype, remat, scan_layers) -> nn.Module``,
        the Linen module for a config (an ``HFConfig`` or transformers config) and task.
      input_names: the arrays the module takes, in call order (the loop feeds these batch keys).
      embedding_modules: modules whose 2-D ``weight`` is an embedding table, not a linear layer.
      padded_embeddings: embedding tables whose ``pad_token_id`` row transformers zeroes at init.
      inserted_levels: HF module levels jaxlora's names drop (see :class:`InsertedLevel`).
      head_names: top-level modules a task model adds to the backbone (initialised fresh when a
        checkpoint lacks them); ``classifier_head`` is the one PEFT's ``SEQ_CLS`` trains whole.
      peft_task_types: jaxlora task -> PEFT ``task_type`` for adapters exported from this family.
      complete_config: ``complete_config(model_type, fields)`` fills fields transformers' config
        class derives from others (Llama's ``head_dim``), in place; ``None`` when there are none.
      module_options: what the family's modules do differently from the other families built from
        the same modules (a frozen dataclass of the family file's, e.g. RoBERTa's position ids and
        head in :class:`jaxlora.models.bert.EncoderOptions`); ``None`` when there is nothing.
    """

    name: str
    hf_types: tuple[HFType, ...]
    prefix: str
    tasks: tuple[str, ...]
    default_task: str
    build: Callable[..., Any]
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")
    embedding_modules: tuple[str, ...] = ()
    padded_embeddings: tuple[str, ...] = ()
    inserted_levels: tuple[InsertedLevel, ...] = ()
    head_names: tuple[str, ...] = ()
    classifier_head: str | None = None
    peft_task_types: Mapping[str, str] = dataclasses.field(default_factory=dict)
    complete_config: Callable[[str, dict], None] | None = None
    module_options: Any = None

    def __post_init__(self):
        if self.default_task not in self.tasks:
            raise ValueError(f"Family {self.name!r}: default_task {self.default_task!r} is not one of {self.tasks}.")
        if self.input_names[:2] != ("input_ids", "attention_mask"):
            raise ValueError(f"Family {self.name!r}: input_names must start with ('input_ids', 'attention_mask').")
        if not set(self.peft_task_types) <= set(self.tasks):
            raise ValueError(f"Family {self.name!r}: peft_task_types names tasks it does not have.")

    def hf_type(self, model_type: str) -> HFType:
        """The :class:`HFType` record of one of this family's model types.

        >>> get_family("roberta").hf_type("xlm-roberta").class_stem
        'XLMRoberta'
        """
        for hf_type in self.hf_types:
            if hf_type.model_type == model_type:
                return hf_type
        raise ValueError(f"Family {self.name!r} does not read model_type {model_type!r}.")


def build_from_spec(spec_type, build: Callable[..., Any]) -> Callable[..., Any]:
    """A family's ``build`` from a spec class (with ``from_hf``) and a ``build(spec, config)``.

    The spec is read from the config (``spec_type.from_hf(config, family, task, config.num_labels,
    dtype, param_dtype)``) with ``remat`` (a :data:`~jaxlora.models.stack.REMAT_POLICIES` name, or a
    bool) and ``scan_layers`` set, then ``build`` picks the module for its task.

    >>> from jaxlora.models import llama
    >>> from jaxlora.models.testing import tiny_config
    >>> build_llama = build_from_spec(llama.DecoderSpec, llama.build)
    >>> module = build_llama(tiny_config("llama"), "llama", "base", "float32", "float32", remat=True)
    >>> type(module).__name__, module.spec.remat, module.spec.scan_layers
    ('DecoderBase', 'full', False)
    """

    def build_module(config, family: str, task: str, dtype, param_dtype, remat: bool | str = False,
                     scan_layers: bool = False):
        spec = spec_type.from_hf(config, family, task, config.num_labels, dtype, param_dtype)
        return build(dataclasses.replace(spec, remat=remat_policy(remat), scan_layers=bool(scan_layers)), config)

    return build_module


_FAMILIES: dict[str, ModelFamily] = {}
_MODEL_TYPES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family`` to the registry (by name and by each of its model types); returns it.

    Registering a name again replaces that record (a reloaded module); a model type already
    read by another family is an error.

    >>> llama = get_family("llama")
    >>> mistral = register_family(dataclasses.replace(
    ...     llama, name="doc-mistral", hf_types=(HFType("doc-mistral", "Mistral"),)))
    >>> get_family("doc-mistral").prefix, get_family("doc-mistral").build is llama.build
    ('model', True)
    >>> unregister_family("doc-mistral")
    """
    for hf_type in family.hf_types:
        owner = _MODEL_TYPES.get(hf_type.model_type)
        if owner is not None and owner.name != family.name:
            raise ValueError(
                f"model_type {hf_type.model_type!r} is already read by family {owner.name!r}; "
                f"a model type belongs to one family."
            )
    unregister_family(family.name)
    _FAMILIES[family.name] = family
    _MODEL_TYPES.update({hf_type.model_type: family for hf_type in family.hf_types})
    return family


def unregister_family(name: str) -> None:
    """Remove a family (no-op when it is not registered).

    >>> unregister_family("never-registered")
    """
    family = _FAMILIES.pop(name, None)
    if family is not None:
        for hf_type in family.hf_types:
            _MODEL_TYPES.pop(hf_type.model_type, None)


def families() -> tuple[str, ...]:
    """Names of the registered families, sorted.

    >>> families()[:3]   # the built-in ones, and any registered since
    ('bert', 'llama', 'roberta')
    """
    return tuple(sorted(_FAMILIES))


def model_types() -> tuple[str, ...]:
    """Every transformers ``model_type`` some family reads, sorted.

    >>> [t for t in model_types() if t in ("bert", "llama", "qwen2", "roberta", "xlm-roberta")]
    ['bert', 'llama', 'qwen2', 'roberta', 'xlm-roberta']
    """
    return tuple(sorted(_MODEL_TYPES))


def get_family(obj) -> ModelFamily:
    """The family record of a name, a jaxlora module (or its ``spec``), or a model config.

    A string is a family name; an object with ``spec.family`` (every jaxlora module) or
    ``family`` (a spec) is looked up by that; anything else by its ``model_type``
    (an ``HFConfig`` or a transformers config).

    >>> get_family("bert").default_task
    'sequence_classification'
    >>> get_family("gpt2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Unknown model family 'gpt2'; registered: bert, llama, roberta...
    """
    if isinstance(obj, ModelFamily):
        return obj
    if isinstance(obj, str):
        if obj not in _FAMILIES:
            raise ValueError(f"Unknown model family {obj!r}; registered: {listing(_FAMILIES)}.")
        return _FAMILIES[obj]
    spec = getattr(obj, "spec", obj)
    name = getattr(spec, "family", None)
    if isinstance(name, str):
        return get_family(name)
    model_type = getattr(obj, "model_type", None)
    if model_type not in _MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not supported; jaxlora models cover {listing(_MODEL_TYPES)}. "
            "A new family registers itself with jaxlora.models.register_family."
        )
    return _MODEL_TYPES[model_type]


def family_of(obj) -> str:
    """The name of the family of a module, spec, or model config (see :func:`get_family`).

    >>> from jaxlora.models.hf_config import HFConfig
    >>> family_of(HFConfig.from_dict({"model_type": "xlm-roberta"}))
    'roberta'
    """
    return get_family(obj).name


def find_hf_type(model_type) -> HFType | None:
    """The :class:`HFType` record of a registered model type, or ``None``.

    >>> find_hf_type("roberta").config_defaults["pad_token_id"]
    1
    >>> find_hf_type("gpt2") is None
    True
    """
    family = _MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
    return family.hf_type(model_type) if family is not None else None


def config_defaults(model_type: str) -> Mapping[str, Any]:
    """The transformers class defaults of a registered model type (``{}`` for an unknown one).

    >>> config_defaults("bert")["hidden_act"]
    'gelu'
    """
    hf_type = find_hf_type(model_type)
    return hf_type.config_defaults if hf_type is not None else {}


def complete_config(model_type: str, fields: dict) -> None:
    """Fill, in place, the config fields the family of ``model_type`` derives from others.

    >>> fields = {"num_attention_heads": 4, "num_key_value_heads": None, "hidden_size": 32, "head_dim": None}
    >>> complete_config("llama", fields)
    >>> fields["num_key_value_heads"], fields["head_dim"]
    (4, 8)
    """
    family = _MODEL_TYPES.get(model_type)
    if family is not None and family.complete_config is not None:
        family.complete_config(model_type, fields)
