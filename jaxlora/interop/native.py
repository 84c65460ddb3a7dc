"""jaxlora's own adapter format: every variant, exactly as trained.

A native adapter folder holds two files:

* ``adapter.safetensors``: the adapter's arrays under flat keys
  ``trainable/lowrank/<path>/<name>``, ``trainable/full/<leaf path>`` and
  ``fixed/<path>/<name>``, in their own dtypes (bit-exact round trip);
* ``adapter_config.json``: ``{"format": "jaxlora-adapter", "format_version": 1,
  "variant": ..., "config": AdapterConfig.to_dict(), "metadata": {...},
  "digest": {"algorithm": "sha256", "arrays": {key: "dtype[shape]:hash"}}}``.

The digest (see :mod:`jaxlora.interop.digest`) is checked on load: garbled tensor bytes that
still parse as safetensors are an error naming the file and the tensors, never a silently
different adapter. Folders written before digests existed load without the check.

Unlike the PEFT export, nothing is expanded: CondLoRA stores its shared maps
(``2 * r * d`` numbers per module type), MTLoRA its ``T`` factors, B-only its
frozen random ``a`` (in ``fixed``), so the adapter reloads as the same variant
and can keep training. The frozen model is never saved here.

>>> frozen = {"layer_0": {"query": {"kernel": jnp.ones((8, 8))}}}
>>> cfg = jaxlora.AdapterConfig("bonly", rank=2, targets=("query",))
>>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
>>> save_adapter("run/adapter", adapter, cfg, metadata={"base_model": "roberta-base"})
'run/adapter'
>>> loaded, loaded_cfg, metadata = load_adapter("run/adapter")
>>> loaded_cfg == cfg, metadata, trees_equal(loaded, adapter)
(True, {'base_model': 'roberta-base'}, True)
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxlora.adapters.config import AdapterConfig
from jaxlora.adapters.core import Adapter
from jaxlora.adapters.targets import flatten, unflatten
from jaxlora import errors
from jaxlora.interop import digest as digest_lib
from jaxlora.interop._files import atomic_folder, read_json, require_folder
from jaxlora.util import write_json

FORMAT = "jaxlora-adapter"
FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
_SEP = "/"


def _flat_arrays(prefix: str, tree: Mapping) -> dict[str, jax.Array]:
    out = {}
    for path, leaf in flatten(tree).items():
        bad = [name for name in path if _SEP in str(name)]
        if bad:
            raise ValueError(f"Adapter tree key {bad[0]!r} contains {_SEP!r}, which the native format uses as separator.")
        out[_SEP.join((prefix, *map(str, path)))] = jnp.asarray(leaf)
    return out


def save_adapter(folder: str, adapter: Adapter, config: AdapterConfig, metadata: Mapping[str, Any] | None = None) -> str:
    """Save ``adapter`` (any variant) and its config to ``folder``, atomically.

    Args:
      folder: destination; created, or replaced if it holds a previous native
        adapter (any other file in it is an error, nothing is deleted).
      adapter: from :func:`jaxlora.init` / training.
      config: its :class:`~jaxlora.AdapterConfig`.
      metadata: JSON-serialisable extras (base model name, task, step, ...),
        returned by :func:`load_adapter`.

    Returns:
      The folder.

    >>> cfg = jaxlora.AdapterConfig("lora", rank=2, targets=("query",))
    >>> adapter = jaxlora.init(jax.random.key(0), {"query": {"kernel": jnp.ones((4, 4))}}, cfg)
    >>> save_adapter("run/adapter", adapter, cfg, metadata={"base_model": "minilm-l6"})
    'run/adapter'
    """
    from safetensors.flax import save_file

    if not isinstance(config, AdapterConfig):
        raise TypeError(f"config must be a jaxlora.AdapterConfig, got {type(config).__name__}.")
    if not isinstance(adapter, Adapter):
        raise TypeError(f"adapter must be a jaxlora.Adapter (trainable, fixed), got {type(adapter).__name__}.")
    metadata = dict(metadata or {})
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": config.variant,
        "config": config.to_dict(),
        # The top-level groups of `trainable`, so empty ones ({"full": {}}) come back too.
        "trainable_groups": sorted(adapter.trainable),
        "metadata": metadata,
        "jaxlora_version": _jaxlora_version(),
    }
    arrays = {**_flat_arrays("fixed", adapter.fixed)}
    for group, tree in adapter.trainable.items():
        arrays.update(_flat_arrays(f"trainable{_SEP}{group}", tree))
    document["digest"] = {"algorithm": digest_lib.ALGORITHM,
                          "arrays": {key: digest_lib.array_digest(value) for key, value in arrays.items()}}
    with atomic_folder(folder, {CONFIG_FILE, WEIGHTS_FILE}) as tmp:
        try:
            write_json(os.path.join(tmp, CONFIG_FILE), document)
        except TypeError as err:
            raise TypeError(
                f"The adapter config and metadata must be JSON-serialisable (str, numbers, lists, dicts): {err}"
            ) from None
        save_file(arrays, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": FORMAT})
    return folder


def _jaxlora_version() -> str:
    import jaxlora

    return getattr(jaxlora, "__version__", "unknown")


def load_adapter(folder: str) -> tuple[Adapter, AdapterConfig, dict]:
    """Load a folder written by :func:`save_adapter`: ``(adapter, config, metadata)``.

    Arrays come back as JAX arrays with the dtypes and values they were saved
    with. A PEFT folder is an error that points to :func:`load_peft`.

    >>> frozen = {"query": {"kernel": jnp.ones((4, 4))}}
    >>> cfg = jaxlora.AdapterConfig("mtlora", rank=2, targets=("query",), options={"structure": "ctcm"})
    >>> _ = save_adapter("run/adapter", jaxlora.init(jax.random.key(0), frozen, cfg), cfg)
    >>> adapter, cfg, metadata = load_adapter("run/adapter")
    >>> cfg.options
    MTLoRAOptions(structure='ctcm', init='kaiming')
    >>> params = jaxlora.apply(frozen, adapter, cfg)
    """
    from safetensors import SafetensorError
    from safetensors.flax import load_file

    folder = require_folder(folder, "a jaxlora adapter folder (from jaxlora.interop.save_adapter)")
    document = read_json(os.path.join(folder, CONFIG_FILE), "a jaxlora adapter config")
    if document.get("format") != FORMAT:
        if "peft_type" in document:
            raise ValueError(
                f"{folder!r} holds a PEFT adapter, not a native jaxlora one: load it with "
                f"jaxlora.interop.load_peft(folder, module, frozen)."
            )
        raise ValueError(f"{os.path.join(folder, CONFIG_FILE)} is not a jaxlora adapter config (no format {FORMAT!r}).")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{folder!r} uses jaxlora adapter format version {version!r}; this jaxlora reads version "
            f"{FORMAT_VERSION}. Load it with the jaxlora version that wrote it, or export it again."
        )
    missing = [k for k in ("config", "trainable_groups") if k not in document]
    if missing:
        raise ValueError(f"{os.path.join(folder, CONFIG_FILE)} lacks {missing}; the adapter config is corrupt.")
    config = AdapterConfig.from_dict(document["config"])
    if "variant" in document and document["variant"] != config.variant:
        raise errors.ModelLoadError(
            f"{os.path.join(folder, CONFIG_FILE)} names variant {document['variant']!r} at the top level but "
            f"{config.variant!r} in its config; the adapter config is inconsistent.",
            "Export the adapter again with jaxlora.interop.save_adapter (do not edit adapter_config.json by hand).",
            path=os.path.join(folder, CONFIG_FILE),
        )

    weights = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"No {WEIGHTS_FILE} in {folder!r}: the adapter's arrays are missing.")
    try:
        arrays = load_file(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights} cannot be read as safetensors ({err}); the file is corrupt.") from None

    _check_digest(document.get("digest"), arrays, weights)
    groups = list(document["trainable_groups"])
    trees: dict[str, dict] = {"fixed": {}, **{f"trainable{_SEP}{g}": {} for g in groups}}
    for key, value in arrays.items():
        parts = tuple(key.split(_SEP))
        head = _SEP.join(parts[:2]) if parts[0] == "trainable" else parts[0]
        rest = parts[2:] if parts[0] == "trainable" else parts[1:]
        if head not in trees or not rest:
            raise ValueError(f"{weights} holds an unexpected tensor {key!r}; expected 'trainable/<group>/...' or 'fixed/...'.")
        trees[head][rest] = value
    adapter = Adapter(
        trainable={g: unflatten(trees[f"trainable{_SEP}{g}"]) for g in groups},
        fixed=unflatten(trees["fixed"]),
    )
    return adapter, config, dict(document.get("metadata") or {})


def _check_digest(digest: Any, arrays: Mapping[str, Any], weights: str) -> None:
    if digest is None:
        return  # written before digests existed
    expected = digest.get("arrays") if isinstance(digest, dict) else None
    if not isinstance(expected, dict) or digest.get("algorithm") != digest_lib.ALGORITHM:
        raise errors.ModelLoadError(f"The digest in {os.path.join(os.path.dirname(weights), CONFIG_FILE)} is malformed.",
                                    "Export the adapter again.", path=weights)
    bad = digest_lib.mismatches(expected, {key: digest_lib.array_digest(value) for key, value in arrays.items()})
    if bad:
        raise errors.ModelLoadError(
            f"{weights} does not match the digest in its adapter_config.json: {len(bad)} tensor(s) differ from what "
            f"was saved ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the file is corrupt.",
            "Export the adapter again, or restore it from the run's checkpoints.",
            path=weights,
        )


def trees_equal(x: Adapter, y: Adapter) -> bool:
    """Whether two adapters have the same structure, dtypes and bits (a test helper for round trips).

    >>> cfg = jaxlora.AdapterConfig("lora", rank=2, targets=("query",))
    >>> adapter = jaxlora.init(jax.random.key(0), {"query": {"kernel": jnp.ones((4, 4))}}, cfg)
    >>> trees_equal(adapter, load_adapter(save_adapter("run/adapter", adapter, cfg))[0])
    True
    >>> trees_equal(adapter, adapter._replace(fixed={"x": jnp.zeros(1)}))
    False
    """
    fx, fy = flatten({"t": x.trainable, "f": x.fixed}), flatten({"t": y.trainable, "f": y.fixed})
    if fx.keys() != fy.keys():
        return False
    return all(
        np.asarray(fx[k]).dtype == np.asarray(fy[k]).dtype
        and np.array_equal(_bytes(fx[k]), _bytes(fy[k]))
        for k in fx
    )


def _bytes(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8)
