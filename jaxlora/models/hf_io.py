"""Reading, writing and renaming Hugging Face checkpoints for jaxlora's models.

Our parameter trees mirror the module tree of transformers' *task* models, with
two mechanical differences:

* a list index becomes part of the name: HF ``encoder.layer.0`` is our
  ``encoder/layer_0`` (Linen names submodules, it has no lists);
* leaves follow Flax: a linear layer's ``weight`` ``(out, in)`` is our
  ``kernel`` ``(in, out)`` (transposed), an embedding's ``weight`` is
  ``embedding``, a norm's ``weight`` (or old ``gamma``) is ``scale``.

A family may drop HF levels that add nothing to a target pattern: BERT/RoBERTa's
HF ``attention.self.query`` is our ``attention/query`` (the family record's
:attr:`~jaxlora.models.family.ModelFamily.inserted_levels`). Everything else
keeps HF's names, so module paths convert both ways by rule, not by table:
:func:`hf_module_name` and :func:`module_path_from_hf`. Which 2-D weights are
embeddings and the backbone prefix also come from the family record.
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

from jaxlora import errors
from jaxlora.models.family import families, get_family
from jaxlora.util.trees import Path, flatten, unflatten

# Non-parameter entries some checkpoints carry (buffers); dropped without a word.
IGNORED_KEY_PATTERNS = (re.compile(r"(^|\.)position_ids$"), re.compile(r"(^|\.)rotary_emb\.inv_freq$"))

_INDEXED = re.compile(r"^(.*)_(\d+)$")


def hf_module_name(family: str, path: Path) -> str:
    """The HF (PyTorch) module name of one of our module paths.

    ``path`` is a parameter path without its leaf (``"kernel"``), as adapter
    targets use it.

    >>> hf_module_name("bert", ("bert", "encoder", "layer_0", "attention", "query"))
    'bert.encoder.layer.0.attention.self.query'
    >>> hf_module_name("llama", ("model", "layers_3", "self_attn", "q_proj"))
    'model.layers.3.self_attn.q_proj'
    """
    inserted = get_family(family).inserted_levels
    parts: list[str] = []
    for i, name in enumerate(path):
        indexed = _INDEXED.match(name)
        if indexed:
            parts.extend(indexed.groups())
            continue
        parts.extend(level.name for level in inserted if i > 0 and path[i - 1] == level.parent and name in level.children)
        parts.append(name)
    return ".".join(parts)


def module_path_from_hf(family: str, name: str) -> Path:
    """Inverse of :func:`hf_module_name`.

    >>> module_path_from_hf("roberta", "roberta.encoder.layer.11.attention.self.value")
    ('roberta', 'encoder', 'layer_11', 'attention', 'value')
    """
    dropped = {(level.parent, level.name) for level in get_family(family).inserted_levels}
    out: list[str] = []
    for part in name.split("."):
        if part.isdigit():
            if not out:
                raise ValueError(f"HF module name {name!r} starts with an index; cannot map it.")
            out[-1] = f"{out[-1]}_{part}"
        elif out and (out[-1], part) in dropped:
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
    return (*module, "embedding" if module[-1] in get_family(family).embedding_modules else "kernel")


def _to_hf_tensor(leaf_name: str, value) -> np.ndarray:
    array = np.asarray(value)
    return np.ascontiguousarray(array.T) if leaf_name == "kernel" else array


def params_to_hf(family: str, params: Mapping) -> dict[str, np.ndarray]:
    """Our (plain) params -> an HF state dict of numpy arrays (kernels transposed).

    >>> from jaxlora.models.build import from_config
    >>> from jaxlora.models.testing import tiny_config
    >>> module, params = from_config(tiny_config("bert"), num_labels=3)
    >>> state_dict = params_to_hf("bert", params)
    >>> state_dict["classifier.weight"].shape   # (num_labels, hidden)
    (3, 32)
    >>> state_dict["bert.encoder.layer.0.attention.self.query.weight"].shape
    (32, 32)
    """
    return {hf_param_name(family, path): _to_hf_tensor(path[-1], value) for path, value in flatten(params).items()}


def params_from_hf(family: str, state_dict: Mapping[str, Any], dtype=None) -> dict:
    """An HF state dict -> our nested params, key by key with no model to check against.

    Keys are renamed and kernels transposed; nothing is added or dropped except
    buffers such as ``position_ids``. To load into a model (prefix handling,
    shape checks, missing keys) use :func:`match_state_dict`.

    >>> w = np.arange(6.0).reshape(2, 3)    # (vocab, hidden)
    >>> params = params_from_hf("llama", {"lm_head.weight": w, "model.norm.weight": np.ones(3)})
    >>> params["lm_head"]["kernel"].shape, sorted(params["model"]["norm"])
    ((3, 2), ['scale'])
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

    >>> state_dict = {"encoder.layer.0.output.dense.weight": np.zeros((4, 8)), "cls.bias": np.zeros(2)}
    >>> report = match_state_dict("bert", state_dict, {("bert", "encoder", "layer_0", "output", "dense", "kernel"): (8, 4),
    ...                                                ("classifier", "kernel"): (4, 2)})
    >>> [p[-2:] for p in report.params], report.missing, report.unexpected
    ([('dense', 'kernel')], [('classifier', 'kernel')], ['cls.bias'])
    """
    checkpoint = {_normalise_key(k): v for k, v in state_dict.items()}
    prefix = get_family(family).prefix
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

    >>> from jaxlora.models.hub import resolve
    >>> [os.path.basename(path) for path in checkpoint_files(resolve("minilm-l6"))]
    ['model.safetensors']
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
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (unsafe or foreign pickle), RuntimeError (truncated zip)
        # Never repeat torch's own advice to retry with weights_only=False: that runs the pickle's code.
        raise errors.ModelLoadError(
            f"{path} cannot be loaded as plain PyTorch tensors ({type(err).__name__}); it is truncated, "
            "or a pickle holding more than tensors, which jaxlora never unpickles.",
            "Convert the checkpoint to model.safetensors from a trusted copy (e.g. with transformers' "
            "save_pretrained(..., safe_serialization=True)), or download it again.",
            path=path,
        ) from None
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

    >>> from jaxlora.models.hub import resolve
    >>> sd = read_state_dict(resolve("minilm-l6"))
    >>> sd["embeddings.word_embeddings.weight"].shape
    (30522, 384)
    """
    from safetensors.numpy import load_file

    state_dict: dict[str, np.ndarray] = {}
    for path in checkpoint_files(folder):
        state_dict.update(_read_bin(path) if path.endswith(".bin") else _read_safetensors(path, load_file))
    return state_dict


def _read_safetensors(path: str, load_file) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise errors.ModelLoadError(
            f"{path} cannot be read as safetensors ({str(err).splitlines()[0][:160] if str(err) else type(err).__name__}); "
            f"the file is truncated or corrupt ({os.path.getsize(path)} bytes on disk).",
            "Download or save the model again.",
            path=path,
        ) from None


def write_safetensors(state_dict: Mapping[str, np.ndarray], folder: str) -> str:
    """Write ``model.safetensors`` (with the ``format: pt`` metadata transformers expects).

    >>> import tempfile
    >>> path = write_safetensors({"classifier.weight": np.zeros((2, 4), np.float32)}, tempfile.mkdtemp())
    >>> os.path.basename(path), read_state_dict(os.path.dirname(path))["classifier.weight"].shape
    ('model.safetensors', (2, 4))
    """
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, SAFETENSORS)
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path, metadata={"format": "pt"})
    return path


def __getattr__(name: str):
    # FAMILIES and BACKBONE_PREFIX were tables here; they now read the family registry, so a family
    # registered later is in them too.
    if name == "FAMILIES":
        return families()
    if name == "BACKBONE_PREFIX":
        return {family: get_family(family).prefix for family in families()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
