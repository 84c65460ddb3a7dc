"""A Hugging Face ``config.json`` read without transformers (and so without PyTorch).

In transformers 5 importing any config class imports ``modeling_rope_utils``,
which imports ``torch`` whenever it is installed: +185 MB resident memory and
about a second, in a process that only runs JAX. A model's config is plain
JSON, so :func:`read_config` reads it into an :class:`HFConfig` and fills in
what transformers' config class would: the class defaults that each registered
family declares for its model types (:class:`~jaxlora.models.family.HFType`), the
fields it derives from others (Llama's ``head_dim``), the label maps
(``num_labels`` is derived from ``id2label``, 2 labels when the file names
none), the legacy ``torch_dtype`` key, and the RoPE settings standardised into
``rope_parameters`` as transformers 5 does (4.x files wrote ``rope_theta`` and
``rope_scaling``).

The result behaves like the transformers object for everything jaxlora reads:
attribute access, ``model_type``, ``num_labels`` (settable), ``to_dict()``
(equal to transformers' own ``to_dict()`` of the same file, except that
``dtype`` stays a string) and ``save_pretrained(folder)``, whose
``config.json`` transformers reads back to the same config.

>>> import tempfile
>>> from jaxlora.models.hub import resolve
>>> config = read_config(resolve("minilm-l6"))
>>> config.hidden_size, config.num_labels
(384, 2)
>>> config.num_labels = 3                  # id2label/label2id follow, as in transformers
>>> config.label2id
{'LABEL_0': 0, 'LABEL_1': 1, 'LABEL_2': 2}
>>> folder = tempfile.mkdtemp()
>>> read_config(config.save_pretrained(folder).removesuffix("config.json")).num_labels
3
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
from typing import Any, Mapping

from jaxlora.models import family
from jaxlora.util.files import write_json

CONFIG_FILE = "config.json"

# Fields every transformers config has (PreTrainedConfig's class defaults).
_COMMON_DEFAULTS: dict[str, Any] = {
    "transformers_version": None,
    "architectures": None,
    "output_hidden_states": False,
    "return_dict": True,
    "dtype": None,
    "chunk_size_feed_forward": 0,
    "is_encoder_decoder": False,
    "id2label": None,
    "label2id": None,
    "problem_type": None,
}

# Generation settings old config.json files carry; transformers drops them from the model config
# (they belong in generation_config.json) unless the family declares them as fields (use_cache).
_GENERATION_KEYS = frozenset({
    "assistant_confidence_threshold", "assistant_lookbehind", "bad_words_ids", "begin_suppress_tokens",
    "diversity_penalty", "do_sample", "early_stopping", "encoder_no_repeat_ngram_size",
    "encoder_repetition_penalty", "epsilon_cutoff", "eta_cutoff", "exponential_decay_length_penalty",
    "forced_bos_token_id", "forced_eos_token_id", "length_penalty", "max_length", "min_length",
    "no_repeat_ngram_size", "num_assistant_tokens", "num_assistant_tokens_schedule", "num_beam_groups",
    "num_beams", "num_return_sequences", "output_scores", "remove_invalid_values", "repetition_penalty",
    "return_dict_in_generate", "suppress_tokens", "target_lookbehind", "temperature", "top_k", "top_p",
    "typical_p", "use_cache",
})
# Keys transformers reads at load time and never keeps on the config.
_DROPPED_KEYS = ("name_or_path", "_commit_hash", "attn_implementation", "experts_implementation",
                 "_attn_implementation_internal", "_experts_implementation_internal")
_DEFAULT_ROPE_THETA = 10000.0
# RoPE types whose scaling needs the pretraining context length.
_ROPE_TYPES_WITH_ORIGINAL_LENGTH = ("llama3", "yarn", "longrope")


def _installed_transformers_version() -> str | None:
    # Package metadata only: importing transformers is what this module exists to avoid.
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


class HFConfig:
    """A model config read from ``config.json``, with transformers' defaults filled in.

    Build with :func:`read_config` (a folder) or :meth:`from_dict` (the parsed JSON).

    >>> config = HFConfig.from_dict({"model_type": "bert", "hidden_size": 384})
    >>> config.hidden_size, config.num_attention_heads, config.num_labels
    (384, 12, 2)
    """

    def __init__(self, model_type: str, fields: Mapping[str, Any], name_or_path: str = ""):
        # Plain attributes, as transformers keeps them, so deepcopy and to_dict see everything.
        self.__dict__.update(copy.deepcopy(dict(fields)))
        self.__dict__["model_type"] = model_type
        self.__dict__["_name_or_path"] = str(name_or_path)
        self.__dict__.setdefault("output_attentions", False)

    @classmethod
    def from_dict(cls, config_dict: Mapping[str, Any], name_or_path: str = "") -> "HFConfig":
        """The config transformers' class for ``config_dict["model_type"]`` would build from this dict.

        Unknown model types get only the fields common to every config (jaxlora's
        :func:`~jaxlora.models.family_of` then says which types it supports).

        >>> HFConfig.from_dict({"model_type": "llama", "rope_theta": 5e5}).rope_parameters
        {'rope_theta': 500000.0, 'rope_type': 'default'}
        """
        given = copy.deepcopy(dict(config_dict))
        model_type = given.pop("model_type", None)
        if not isinstance(model_type, str) or not model_type:
            raise ValueError(
                "The config has no 'model_type'; a Hugging Face config.json names its architecture there "
                "(e.g. \"model_type\": \"bert\"). Add it, or re-save the config with transformers."
            )
        class_defaults = family.config_defaults(model_type)
        declared = set(_COMMON_DEFAULTS) | set(class_defaults)
        # Keys the config class declares become fields; the rest are extra keyword arguments.
        fields = {**_COMMON_DEFAULTS, **class_defaults}
        fields.update({k: v for k, v in given.items() if k in declared})
        extra = {k: v for k, v in given.items() if k not in declared}

        legacy_dtype = extra.pop("torch_dtype", None)
        if fields["dtype"] is None and legacy_dtype is not None:
            fields["dtype"] = legacy_dtype
        family.complete_config(model_type, fields)
        if "rope_parameters" in fields:
            fields["rope_parameters"] = _standard_rope(
                extra.pop("rope_scaling", None) or fields["rope_parameters"],
                extra.pop("rope_theta", _DEFAULT_ROPE_THETA),
                fields["max_position_embeddings"],
            )
        num_labels = extra.pop("num_labels", None)
        for key in _DROPPED_KEYS:
            extra.pop(key, None)
        for key in _GENERATION_KEYS:
            extra.pop(key, None)

        config = cls(model_type, {**fields, **extra}, name_or_path)
        if config.id2label is None:
            config.num_labels = 2 if num_labels is None else num_labels
        else:
            # JSON keys are strings; transformers keys id2label by int.
            config.id2label = {int(key): value for key, value in config.id2label.items()}
        if config.problem_type == "single_label_classification" and config.num_labels == 1:
            raise ValueError(
                'problem_type="single_label_classification" needs num_labels > 1; use num_labels=2 for '
                'binary classification or problem_type="regression" for a single output.'
            )
        return config

    @property
    def num_labels(self) -> int | None:
        """Number of labels: the size of ``id2label`` (stored there, as in transformers)."""
        id2label = self.__dict__.get("id2label")
        return None if id2label is None else len(id2label)

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        if self.__dict__.get("id2label") is None or self.num_labels != num_labels:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            self.label2id = {label: i for i, label in self.id2label.items()}

    @property
    def rope_scaling(self) -> dict | None:
        """transformers 4.x's name for ``rope_parameters`` (kept readable, as transformers 5 does)."""
        return self.__dict__.get("rope_parameters")

    @rope_scaling.setter
    def rope_scaling(self, value: Mapping[str, Any] | None) -> None:
        self.rope_parameters = None if value is None else _standard_rope(
            value, _DEFAULT_ROPE_THETA, self.max_position_embeddings
        )

    @property
    def name_or_path(self) -> str:
        """The folder the config was read from."""
        return self._name_or_path

    def __getattr__(self, name: str):
        # Only reached for missing attributes; never touch self.<attr> here (deepcopy calls it half-built).
        model_type = self.__dict__.get("model_type", "?")
        raise AttributeError(f"The {model_type!r} config has no attribute {name!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Every attribute, as transformers' ``PreTrainedConfig.to_dict()`` lists them.

        >>> HFConfig.from_dict({"model_type": "bert"}).to_dict()["layer_norm_eps"]
        1e-12
        """
        output = copy.deepcopy(self.__dict__)
        output["transformers_version"] = _installed_transformers_version() or output.get("transformers_version")
        return output

    def save_pretrained(self, folder: str | os.PathLike) -> str:
        """Write ``folder/config.json``; ``transformers.AutoConfig.from_pretrained(folder)`` reads the same config.

        >>> import os, tempfile
        >>> path = HFConfig.from_dict({"model_type": "roberta"}).save_pretrained(tempfile.mkdtemp())
        >>> os.path.basename(path)
        'config.json'
        """
        content = self.to_dict()
        content.pop("_name_or_path", None)  # where it was read from, not part of the model (transformers drops it too)
        dtype = content.get("dtype")
        if dtype is not None and not isinstance(dtype, str):
            content["dtype"] = str(dtype).split(".")[-1]  # a torch or numpy dtype set by the caller
        path = os.path.join(os.fspath(folder), CONFIG_FILE)
        write_json(path, content)
        return path

    def __eq__(self, other) -> bool:
        return isinstance(other, HFConfig) and self.__dict__ == other.__dict__

    def __repr__(self) -> str:
        return f"HFConfig({json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)})"


def _standard_rope(params: Mapping[str, Any] | None, theta: float, max_position_embeddings: int) -> dict[str, Any]:
    """RoPE settings in transformers 5's ``rope_parameters`` form (type, theta and, where scaled, original length)."""
    rope = dict(params or {})
    rope.setdefault("rope_theta", theta)
    rope.setdefault("rope_type", rope.get("type", "default"))
    if rope["rope_type"] in _ROPE_TYPES_WITH_ORIGINAL_LENGTH:
        rope.setdefault("original_max_position_embeddings", max_position_embeddings)
    return rope


def read_config(folder: str | os.PathLike) -> HFConfig:
    """The :class:`HFConfig` of a checkpoint folder's ``config.json``.

    >>> from jaxlora.models.hub import resolve
    >>> read_config(resolve("minilm-l6")).num_hidden_layers
    6
    """
    folder = os.fspath(folder)
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{folder} has no {CONFIG_FILE}. Pass a folder holding a Hugging Face checkpoint "
            "(config.json and weights), e.g. one written by save_pretrained."
        )
    try:
        with open(path, encoding="utf-8") as file:
            config_dict = json.load(file)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-save the config with transformers.") from err
    if not isinstance(config_dict, dict):
        raise ValueError(f"{path} holds a JSON {type(config_dict).__name__}, not an object of config fields.")
    return HFConfig.from_dict(config_dict, name_or_path=folder)
