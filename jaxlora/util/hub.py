"""Whether the Hugging Face Hub can be used right now, decided in about a second.

huggingface_hub, transformers and datasets retry a dead network for close to a
minute (51 s measured without one). Code that could fetch from the Hub asks
:func:`hub_offline_reason` first and fails at once, with the reason, when the
answer is not ``None``.

Two checks, in order: the offline flags the three libraries honour
(:data:`OFFLINE_FLAGS`), then one TCP connection to the Hub's host (from
``HF_ENDPOINT``, default ``huggingface.co``) with a short timeout. The probe's
answer is kept for :data:`CACHE_SECONDS` per host, so a program that asks
several times pays for one probe; the flags are read on every call.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.parse

# Environment variables that switch huggingface_hub / transformers / datasets offline.
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")

# Values huggingface_hub reads as true (its ENV_VARS_TRUE_VALUES), compared lower-cased.
_TRUE_VALUES = ("1", "true", "yes", "on")

CACHE_SECONDS = 60.0

_probes: dict[tuple[str, int], tuple[float, str | None]] = {}


def offline_flag() -> str | None:
    """The first offline flag that is set, as ``"NAME=value"``, or ``None``.

    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
    ...     offline_flag()
    'HF_HUB_OFFLINE=1'
    """
    for name in OFFLINE_FLAGS:
        value = os.environ.get(name, "")
        if value.strip().lower() in _TRUE_VALUES:
            return f"{name}={value}"
    return None


def hub_host() -> tuple[str, int]:
    """The Hub's ``(host, port)``: ``HF_ENDPOINT`` when set, else ``huggingface.co:443``.

    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"HF_ENDPOINT": "http://mirror.example:8080/hf"}):
    ...     hub_host()
    ('mirror.example', 8080)
    >>> with mock.patch.dict(os.environ, {"HF_ENDPOINT": ""}):
    ...     hub_host()
    ('huggingface.co', 443)
    """
    url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    default_port = 80 if url.scheme == "http" else 443
    return url.hostname or "huggingface.co", url.port or default_port


def _probe(host: str, port: int, timeout_s: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as err:
        return f"{host} is unreachable ({err.__class__.__name__}: {err})"


def hub_offline_reason(timeout_s: float = 1.5, host: str | None = None, port: int | None = None) -> str | None:
    """Why the Hub cannot be used right now (a phrase for an error message), or ``None`` when it can.

    ``host``/``port`` default to :func:`hub_host`. The connection answer is cached
    for :data:`CACHE_SECONDS` per ``(host, port)``; the flags are checked every time.

    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
    ...     hub_offline_reason()
    'HF_HUB_OFFLINE=1 is set'
    """
    flag = offline_flag()
    if flag is not None:
        return f"{flag} is set"
    if host is None:
        host, default_port = hub_host()
        port = port or default_port
    key = (host, port or 443)
    now = time.monotonic()
    cached = _probes.get(key)
    if cached is not None and now - cached[0] < CACHE_SECONDS:
        return cached[1]
    reason = _probe(*key, timeout_s)
    _probes[key] = (now, reason)
    return reason
