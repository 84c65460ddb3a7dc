"""Hugging Face PEFT's LoRA format, both ways.

**Export** (:func:`save_peft`). Every jaxlora variant is a plain LoRA at
inference (METHODS.md section 5): :func:`jaxlora.to_lora_factors` gives each
adapted matrix as ``delta = scale * a @ b`` (B-only/A-only as they are,
CondLoRA per layer from that layer's frozen weight, MTLoRA with ``T`` folded
in). PEFT stores them out-first, ``lora_A.weight = a.T`` ``(r, d_in)`` and
``lora_B.weight = b.T`` ``(d_out, r)``, under
``base_model.model.<HF task-model module name>``, and computes its own scale
from ``r``/``lora_alpha`` (``alpha / sqrt(r)`` with ``use_rslora``) and the
per-module ``rank_pattern``/``alpha_pattern``. The export writes each module's
own rank and alpha there, so PEFT's scale equals jaxlora's; were a variant's
scale ever to differ, the ratio is folded into ``lora_B``, which keeps
``scale * a @ b`` exact.

Leaves trained in full (``config.trainable``, e.g. the classifier) become
``modules_to_save``: PEFT 0.21 saves and loads them as the plain module
tensors ``base_model.model.<module>.weight``/``.bias``, whole modules at a time,
so the untouched leaves of such a module are written from the frozen params.
For sequence classification PEFT always wraps ``classifier``/``score`` whole,
so a trained leaf anywhere inside a head exports the whole head.

**Import** (:func:`load_peft`). A PEFT LoRA folder becomes a jaxlora ``"lora"``
adapter whose config reproduces PEFT's ranks, alphas, rsLoRA, targets (the
modules the file actually adapts) and ``modules_to_save`` (as fully trained
leaves). PEFT options that change the computation in ways plain LoRA does not
express (DoRA, ``fan_in_fan_out``, LoRA biases, other PEFT types, ...) are an
error that names the option.

In PyTorch, ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained("roberta-base"),
"run/peft_adapter")`` loads an export (tests/interop/test_peft.py compares the logits), and
``load_peft("run/peft_adapter", module, frozen)`` reads it back here.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxlora.adapters.base import Path
from jaxlora.adapters.config import AdapterConfig
from jaxlora.adapters.core import Adapter, apply, to_lora_factors
from jaxlora.adapters.stacks import unstack_layers
from jaxlora.adapters.targets import find_targets, find_trainable_leaves, flatten, join, linear_modules, unflatten
from jaxlora.interop._files import atomic_folder, read_json, require_folder
from jaxlora.util import listing, write_json

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
WEIGHTS_FILE_BIN = "adapter_model.bin"
README_FILE = "README.md"
KEY_PREFIX = "base_model.model."

# PEFT LoraConfig fields and the values jaxlora can honour; anything else is an error naming the field.
_MUST_EQUAL = {
    "peft_type": "LORA",
    "fan_in_fan_out": False,
    "bias": "none",
    "use_dora": False,
    "lora_bias": False,
    "use_qalora": False,
}
_MUST_BE_EMPTY = (
    "layers_to_transform", "layers_pattern", "layer_replication", "target_parameters",
    "trainable_token_indices", "alora_invocation_tokens", "use_bdlora", "arrow_config", "kasa_config",
    "monteclora_config", "velora_config", "megatron_config", "modules_to_tie",
)
# Fields that only describe initialisation, bookkeeping or matching (the weights file says which
# modules are adapted), so they do not change what a loaded adapter computes.
_IGNORED = {
    "r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "target_modules", "exclude_modules",
    "modules_to_save", "lora_dropout", "init_lora_weights", "loftq_config", "eva_config", "corda_config",
    "lora_ga_config", "inference_mode", "task_type", "base_model_name_or_path", "revision", "auto_mapping",
    "peft_version", "megatron_core", "qalora_group_size", "ensure_weight_tying",
}


# ---------------------------------------------------------------------------
# Names


class _Names(NamedTuple):
    """HF names of a model's parameters: module name -> our module path, param key -> our leaf path.

    ``prefix`` (the backbone attribute in HF task models), ``task_type`` (PEFT's, for the module's
    task) and ``seq_cls_head`` (the head PEFT's SEQ_CLS trains whole, or ``None`` for other task
    types) come from the model's family record.
    """

    family: str
    modules: dict[str, Path]  # linear modules (kernel owners) only
    params: dict[str, Path]
    prefix: str
    task_type: str | None
    seq_cls_head: str | None


def _names(module, frozen: Mapping) -> _Names:
    from jaxlora.models import get_family, hf_module_name, hf_param_name

    family = get_family(module)
    flat = flatten(frozen)
    modules = {hf_module_name(family.name, path): path for path in linear_modules(flat)}
    params = {hf_param_name(family.name, path): path for path in flat}
    task_type = family.peft_task_types.get(module.spec.task)
    seq_cls_head = family.classifier_head if task_type == "SEQ_CLS" else None
    return _Names(family.name, modules, params, family.prefix, task_type, seq_cls_head)


def _lookup(table: Mapping[str, Path], name: str, prefix: str) -> Path | None:
    """Find an HF name as written, or with the backbone prefix added or removed
    (an adapter trained on ``AutoModel`` loaded onto a task model, or back)."""
    for candidate in (name, f"{prefix}.{name}", name[len(prefix) + 1 :] if name.startswith(prefix + ".") else None):
        if candidate is not None and candidate in table:
            return table[candidate]
    return None


# ---------------------------------------------------------------------------
# Export


def _peft_scale(rank: int, alpha: float, rslora: bool) -> float:
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def _compact_target_names(targets: Mapping[Path, Any], names: _Names) -> list[str]:
    """PEFT ``target_modules``: the modules' own names (``["query", "value"]``) when PEFT's suffix
    rule picks exactly our targets among the linear modules, else the full HF module names."""
    wanted = {n for n, p in names.modules.items() if p in targets}
    short = sorted({n.rsplit(".", 1)[-1] for n in wanted})
    hit = {n for n in names.modules if any(n == s or n.endswith("." + s) for s in short)}
    return short if hit == wanted else sorted(wanted)


def _modules_to_save(full_leaves: list[Path], names: _Names) -> dict[str, Path]:
    """HF module name -> our module path of every module PEFT must save whole."""
    from jaxlora.models import hf_module_name

    chosen: dict[str, Path] = {}
    for leaf in full_leaves:
        module_path = leaf[:-1]
        if module_path and module_path[0] == names.seq_cls_head:
            module_path = module_path[:1]
        chosen[hf_module_name(names.family, module_path)] = module_path
    # A module inside another saved module is saved with it.
    return {n: p for n, p in chosen.items() if not any(q != p and p[: len(q)] == q for q in chosen.values())}


def peft_state_dict(module, frozen: Mapping, adapter: Adapter, config: AdapterConfig) -> tuple[dict, dict]:
    """The PEFT ``(adapter_config dict, {key: np.ndarray})`` of an adapter, without writing files.

    >>> from jaxlora import models
    >>> module, frozen = models.from_config(models.tiny_config("bert"), num_labels=2)   # a tiny BERT
    >>> cfg = jaxlora.AdapterConfig("lora", rank=2, trainable=("classifier",))
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    >>> peft_config, tensors = peft_state_dict(module, frozen, adapter, cfg)
    >>> tensors["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"].shape   # (r, d_in)
    (2, 32)
    >>> peft_config["target_modules"], peft_config["modules_to_save"]
    (['query', 'value'], ['classifier'])
    """
    from jaxlora.models import hf_param_name

    # PEFT names every layer: a scanned model's stacked frozen tree is read per layer (slices, not copies).
    frozen, config = unstack_layers(frozen, config.layer_stacks), config.replace(layer_stacks=())
    names = _names(module, frozen)
    flat = flatten(frozen)
    targets = find_targets(flat, config)
    if names.seq_cls_head is not None:
        in_head = sorted(join(p) for p in targets if p[0] == names.seq_cls_head)
        if in_head:
            raise ValueError(
                f"Cannot export to PEFT: the adapter adapts {in_head} inside the classification head, but PEFT's "
                f"SEQ_CLS task always trains {names.seq_cls_head!r} in full and never adapts inside it. Exclude the "
                f"head from the targets (exclude=('classifier',)) and train it in full (trainable=('classifier',))."
            )
    factors = to_lora_factors(frozen, adapter, config)
    by_path = {p: n for n, p in names.modules.items()}

    r, alpha = config.rank, float(config.alpha)
    rank_pattern, alpha_pattern, tensors = {}, {}, {}
    for path, (a, b, scale) in sorted(factors.items()):
        hf_name = by_path[path]
        rank = int(a.shape[1])
        module_alpha = float(targets[path].alpha)
        if rank != r:
            rank_pattern[hf_name] = rank
        if module_alpha != alpha:
            alpha_pattern[hf_name] = module_alpha
        a = np.asarray(a, np.float32)
        b = np.asarray(b, np.float32)
        # PEFT scales by its own alpha/r; fold any difference into lora_B (exactly 1.0 for built-in variants).
        ratio = float(scale) / _peft_scale(rank, module_alpha, config.rslora)
        if ratio != 1.0:
            b = (b.astype(np.float64) * ratio).astype(np.float32)
        tensors[f"{KEY_PREFIX}{hf_name}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"{KEY_PREFIX}{hf_name}.lora_B.weight"] = np.ascontiguousarray(b.T)

    full_leaves = sorted(flatten(adapter.trainable.get("full", {})))
    saved_modules = _modules_to_save(full_leaves, names)
    clash = sorted(n for n, p in saved_modules.items() if any(t[: len(p)] == p for t in targets))
    if clash:
        raise ValueError(
            f"Cannot export to PEFT: modules {clash} are both adapted and trained in full, and PEFT's "
            f"modules_to_save never holds an adapted module. Train only leaves outside the adapted modules."
        )
    # Saved modules are written whole: trained leaves from the adapter, the rest from the frozen params.
    trained = {**flat, **flatten(adapter.trainable.get("full", {}))}
    for module_path in saved_modules.values():
        for leaf_path, value in trained.items():
            if leaf_path[: len(module_path)] == module_path:
                key = hf_param_name(names.family, leaf_path)
                array = np.asarray(value, np.float32)
                tensors[KEY_PREFIX + key] = np.ascontiguousarray(array.T if leaf_path[-1] == "kernel" else array)

    peft_config = {
        "peft_type": "LORA",
        "task_type": names.task_type,
        "r": r,
        "lora_alpha": alpha,
        "use_rslora": bool(config.rslora),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "target_modules": _compact_target_names(targets, names),
        "modules_to_save": sorted(saved_modules) or None,
        "lora_dropout": float(config.dropout),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "base_model_name_or_path": None,
        "revision": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "exclude_modules": None,
    }
    return peft_config, tensors


def save_peft(
    folder: str,
    module,
    frozen: Mapping,
    adapter: Adapter,
    config: AdapterConfig,
    base_model_name_or_path: str | None = None,
) -> str:
    """Write ``adapter`` (any variant) as a PEFT LoRA adapter folder, atomically.

    The folder holds ``adapter_config.json`` and ``adapter_model.safetensors``;
    ``PeftModel.from_pretrained(AutoModelFor<task>.from_pretrained(base), folder)``
    then computes what jaxlora computes.

    Args:
      folder: destination; created, or replaced if it holds a previous PEFT
        export (any other file in it is an error, nothing is deleted).
      module: the jaxlora model (from :func:`jaxlora.models.from_pretrained`);
        its family names the modules, its task sets PEFT's ``task_type``.
      frozen: the frozen params the adapter was trained on (CondLoRA's
        factors are computed from them).
      adapter, config: the adapter and its config.
      base_model_name_or_path: recorded in the config for PEFT to find the base
        model; defaults to the module config's ``_name_or_path`` when it has one.

    >>> from jaxlora import models
    >>> module, frozen = models.from_config(models.tiny_config("bert"), num_labels=2)   # a tiny BERT
    >>> cfg = jaxlora.AdapterConfig("lora", rank=2, trainable=("classifier",))
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    >>> save_peft("run/peft_adapter", module, frozen, adapter, cfg, "my-bert")
    'run/peft_adapter'
    >>> sorted(os.listdir("run/peft_adapter"))
    ['README.md', 'adapter_config.json', 'adapter_model.safetensors']
    """
    from safetensors.numpy import save_file

    peft_config, tensors = peft_state_dict(module, frozen, adapter, config)
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(module, "config", None), "_name_or_path", None) or None
    peft_config["base_model_name_or_path"] = base_model_name_or_path
    with atomic_folder(folder, {CONFIG_FILE, WEIGHTS_FILE, README_FILE}) as tmp:
        write_json(os.path.join(tmp, CONFIG_FILE), peft_config)
        save_file(tensors, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        with open(os.path.join(tmp, README_FILE), "w") as f:
            f.write(
                f"# LoRA adapter exported by jaxlora\n\nVariant `{config.describe()}` written as plain LoRA "
                f"factors for PEFT. Base model: `{base_model_name_or_path}`.\n"
            )
    return folder


# ---------------------------------------------------------------------------
# Import


def check_peft_config(peft_config: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming each PEFT option jaxlora cannot load as plain LoRA.

    >>> check_peft_config({"peft_type": "LORA", "r": 8, "use_dora": False})   # plain LoRA: fine
    >>> check_peft_config({"peft_type": "LORA", "use_dora": True})
    Traceback (most recent call last):
    ValueError: This PEFT adapter uses options jaxlora cannot load as a plain LoRA adapter: use_dora=True ...
    """
    problems = []
    for field, wanted in _MUST_EQUAL.items():
        value = peft_config.get(field, wanted)
        if field == "peft_type":
            value = str(value).upper()
        if value != wanted and not (wanted is False and value is None):
            problems.append(f"{field}={value!r} (jaxlora loads only {field}={wanted!r})")
    for field in _MUST_BE_EMPTY:
        if peft_config.get(field) not in (None, False, [], {}, ""):
            problems.append(f"{field}={peft_config[field]!r} (not supported)")
    known = set(_MUST_EQUAL) | set(_MUST_BE_EMPTY) | _IGNORED
    for field, value in peft_config.items():
        if field not in known and value not in (None, False, [], {}, ""):
            problems.append(f"{field}={value!r} (an option jaxlora does not know)")
    if problems:
        raise ValueError(
            "This PEFT adapter uses options jaxlora cannot load as a plain LoRA adapter: "
            + "; ".join(problems)
            + ". Merge or convert it in PEFT first, or retrain without these options."
        )


def _pattern_value(patterns: Mapping[str, Any], module_name: str, default):
    """PEFT's rank_pattern/alpha_pattern rule: the first key that matches the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default


def _read_tensors(folder: str) -> dict[str, np.ndarray]:
    path = os.path.join(folder, WEIGHTS_FILE)
    if os.path.isfile(path):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path} cannot be read as safetensors ({err}); the file is corrupt.") from None
    binary = os.path.join(folder, WEIGHTS_FILE_BIN)
    if os.path.isfile(binary):
        import torch

        return {k: v.float().numpy() for k, v in torch.load(binary, map_location="cpu", weights_only=True).items()}
    raise FileNotFoundError(f"No {WEIGHTS_FILE} (or {WEIGHTS_FILE_BIN}) in {folder!r}: the adapter's weights are missing.")


def _exact_patterns(paths: list[Path], candidates: list[list[str]], check) -> tuple[str, ...]:
    """The first candidate pattern list ``check`` confirms selects exactly ``paths``, else one exact regex per path."""
    for patterns in candidates:
        if patterns and check(tuple(patterns)):
            return tuple(patterns)
    return tuple(f"re:^{re.escape(join(p))}$" for p in sorted(paths))


def load_peft(folder: str, module, frozen: Mapping) -> tuple[Adapter, AdapterConfig]:
    """Load a PEFT LoRA folder onto a jaxlora model: ``(adapter, config)`` of variant ``"lora"``.

    PEFT's ``r``, ``lora_alpha``, ``use_rslora``, ``rank_pattern``/``alpha_pattern`` and
    ``lora_dropout`` carry over; the adapted modules are those the weights file
    holds; ``modules_to_save`` tensors become leaves trained in full
    (``adapter.trainable["full"]``), so training can continue from the adapter.

    Raises:
      ValueError: an unsupported PEFT option (named), a module the model does not
        have, or a tensor whose shape does not fit the model.

    >>> from jaxlora import models
    >>> module, frozen = models.from_config(models.tiny_config("bert"), num_labels=2)   # a tiny BERT
    >>> cfg = jaxlora.AdapterConfig("lora", rank=2, trainable=("classifier",))
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    >>> _ = save_peft("peft_adapter", module, frozen, adapter, cfg)
    >>> loaded, loaded_cfg = load_peft("peft_adapter", module, frozen)
    >>> loaded_cfg.rank, loaded_cfg.targets, loaded_cfg.trainable
    (2, ('query', 'value'), ('classifier',))
    >>> ids = jnp.ones((2, 5), jnp.int32)
    >>> module.apply({"params": jaxlora.apply(frozen, loaded, loaded_cfg)}, ids, jnp.ones_like(ids)).shape
    (2, 2)
    """
    folder = require_folder(folder, "a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    peft_config = read_json(os.path.join(folder, CONFIG_FILE), "a PEFT adapter config")
    if peft_config.get("format") == "jaxlora-adapter":
        raise ValueError(f"{folder!r} holds a native jaxlora adapter: load it with jaxlora.interop.load_adapter(folder).")
    if "peft_type" not in peft_config:
        raise ValueError(f"{os.path.join(folder, CONFIG_FILE)} has no 'peft_type': it is not a PEFT adapter config.")
    check_peft_config(peft_config)
    r = int(peft_config.get("r", 8))
    lora_alpha = float(peft_config.get("lora_alpha", 8))
    rslora = bool(peft_config.get("use_rslora", False))
    rank_pattern = dict(peft_config.get("rank_pattern") or {})
    alpha_pattern = dict(peft_config.get("alpha_pattern") or {})

    from jaxlora.models import layer_stacks, unstack_params

    # PEFT names every layer: a scanned model's frozen tree is read per layer, and the config it
    # gets back names the stacks again, to apply to the stacked tree.
    stacks, frozen = layer_stacks(module), unstack_params(frozen, module)
    names = _names(module, frozen)
    flat = flatten(frozen)
    tensors = _read_tensors(folder)
    lora: dict[Path, dict[str, np.ndarray]] = {}
    lora_names: dict[Path, str] = {}
    full: dict[Path, np.ndarray] = {}
    unknown_modules, unknown_params = set(), set()
    for key, value in tensors.items():
        name = key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key
        # Files written from a live PeftModel's state dict keep the wrapper's names; PEFT's own save drops them.
        name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight", name)
        if match:
            module_name, which = match.groups()
            path = _lookup(names.modules, module_name, names.prefix)
            if path is None:
                unknown_modules.add(module_name)
                continue
            lora.setdefault(path, {})[which] = np.asarray(value, np.float32)
            lora_names[path] = module_name
            continue
        if re.search(r"\.(lora_embedding_[AB]|lora_magnitude_vector|lora_[A-Za-z_]+)\b", name):
            raise ValueError(
                f"Tensor {key!r} is a kind of LoRA parameter jaxlora cannot load (only Linear lora_A/lora_B "
                f"and modules_to_save tensors are supported)."
            )
        path = _lookup(names.params, name, names.prefix)
        if path is None:
            unknown_params.add(name)
            continue
        full[path] = np.asarray(value)
    if unknown_modules or unknown_params:
        raise ValueError(
            f"The PEFT adapter in {folder!r} does not fit this {names.family} model: "
            + (f"it adapts modules the model has no linear layer for: {listing(unknown_modules)}. " if unknown_modules else "")
            + (f"it saves tensors the model has no parameter for: {listing(unknown_params)}. " if unknown_params else "")
            + f"The model's linear modules are: {listing(names.modules)}. Load it onto the model it was trained for."
        )
    if not lora:
        raise ValueError(f"{folder!r} holds no lora_A/lora_B tensors: nothing to load.")

    lowrank, ranks, alphas = {}, {}, {}
    for path, pair in sorted(lora.items()):
        module_name = lora_names[path]
        if set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"The PEFT adapter has {sorted(pair)} but not both lora_A and lora_B for {module_name!r}.")
        d_in, d_out = np.shape(flat[path + ("kernel",)])
        rank = int(_pattern_value(rank_pattern, module_name, r))
        alpha = float(_pattern_value(alpha_pattern, module_name, lora_alpha))
        want = {"lora_A": (rank, d_in), "lora_B": (d_out, rank)}
        for which, shape in want.items():
            if tuple(pair[which].shape) != shape:
                raise ValueError(
                    f"PEFT tensor {module_name}.{which}.weight has shape {tuple(pair[which].shape)}, but this "
                    f"model's {module_name} is {d_out}x{d_in} (out x in) and the adapter config gives it rank "
                    f"{rank}, so it must be {shape}. The adapter was made for another model or its config is wrong."
                )
        lowrank[path] = {"a": jnp.asarray(pair["lora_A"].T), "b": jnp.asarray(pair["lora_B"].T)}
        ranks[path], alphas[path] = rank, alpha

    trained_full = {}
    for path, value in full.items():
        expected = tuple(np.shape(flat[path]))
        array = value.T if path[-1] == "kernel" else value
        if tuple(array.shape) != expected:
            raise ValueError(
                f"PEFT tensor {join(path)!r} (modules_to_save) has shape {tuple(value.shape)}, which does not fit "
                f"the model's parameter of shape {expected} (jaxlora layout). Load it onto the model it was trained for."
            )
        trained_full[path] = jnp.asarray(array, jnp.float32)

    config = _lora_config(flat, sorted(lowrank), ranks, alphas, r, lora_alpha, rslora, sorted(trained_full),
                          float(peft_config.get("lora_dropout") or 0.0))
    adapter = Adapter(
        trainable={
            "lowrank": unflatten({p + (n,): v for p, leaves in lowrank.items() for n, v in leaves.items()}),
            "full": unflatten(trained_full),
        },
        fixed={},
    )
    apply(frozen, adapter, config)  # checks the adapter fits the config it is returned with
    return adapter, config.replace(layer_stacks=stacks)


def _lora_config(flat, paths, ranks, alphas, r, alpha, rslora, full_paths, dropout) -> AdapterConfig:
    """An AdapterConfig that selects exactly ``paths`` with their ranks/alphas, and trains ``full_paths``."""
    base = AdapterConfig("lora", rank=r, alpha=alpha, rslora=rslora, dropout=dropout, exclude=(), targets=("x",))

    def targets_ok(patterns):
        try:
            return set(find_targets(flat, base.replace(targets=patterns))) == set(paths)
        except ValueError:
            return False

    targets = _exact_patterns(paths, [sorted({p[-1] for p in paths})], targets_ok)
    config = base.replace(targets=targets)
    # Per-module ranks/alphas: by module name ({"value": 2}) when that reproduces them all, else one per path.
    for field, values, default in (("rank_pattern", ranks, r), ("alpha_pattern", alphas, alpha)):
        by_group: dict[str, set] = {}
        for p in paths:
            by_group.setdefault(p[-1], set()).add(values[p])
        short = {g: v.pop() for g, v in by_group.items() if len(v) == 1 and next(iter(v)) != default}
        exact = {f"re:^{re.escape(join(p))}$": values[p] for p in paths if values[p] != default}
        attribute = "rank" if field == "rank_pattern" else "alpha"
        try:
            found = find_targets(flat, config.replace(**{field: short}))
            fits = all(getattr(found[p], attribute) == values[p] for p in paths)
        except (ValueError, KeyError):
            fits = False
        config = config.replace(**{field: short if fits else exact})
    if full_paths:
        chosen = find_targets(flat, config)

        def trainable_ok(patterns):
            try:
                return set(find_trainable_leaves(flat, config.replace(trainable=patterns), chosen)) == set(full_paths)
            except ValueError:
                return False

        candidates = [sorted({p[0] for p in full_paths}), sorted({join(p[:-1]) for p in full_paths})]
        config = config.replace(trainable=_exact_patterns(full_paths, candidates, trainable_ok))
    return config
