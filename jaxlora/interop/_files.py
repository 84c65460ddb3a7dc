"""Writing export folders atomically, and reading their JSON with clear errors.

Every exporter in :mod:`jaxlora.interop` builds its folder under a temporary
name beside the destination and renames it into place when complete, so a
crash or a full disk never leaves a half-written adapter where a reader (a
training run resuming, a serving process) would pick it up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterable, Iterator


@contextlib.contextmanager
def atomic_folder(folder: str, owned_names: Iterable[str]) -> Iterator[str]:
    """Yield a temporary folder to fill; on success it replaces ``folder``.

    ``owned_names`` are the files the exporter writes. An existing ``folder``
    holding anything else is left untouched and is an error, so an export never
    deletes files it did not write.

    >>> with atomic_folder("out/adapter", {"notes.txt"}) as tmp:
    ...     with open(os.path.join(tmp, "notes.txt"), "w") as f:
    ...         _ = f.write("complete")
    >>> os.listdir("out/adapter")
    ['notes.txt']
    """
    folder = os.path.abspath(os.path.expanduser(folder))
    if os.path.exists(folder):
        if not os.path.isdir(folder):
            raise ValueError(f"{folder!r} exists and is not a folder; choose another destination.")
        foreign = sorted(set(os.listdir(folder)) - set(owned_names))
        if foreign:
            raise ValueError(
                f"{folder!r} already holds files this export does not write ({foreign[:5]}); saving would "
                f"replace the folder as a whole. Choose an empty or new folder."
            )
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=parent)
    try:
        yield tmp
        old = None
        if os.path.exists(folder):
            # A folder cannot be renamed over a non-empty one: move the old one aside first.
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.old-", dir=parent)
            os.rename(folder, os.path.join(old, "previous"))
        os.rename(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str, what: str) -> dict:
    """Read a JSON object, with errors that name the file and say what it should be."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {os.path.basename(path)} in {os.path.dirname(path)!r}: not {what}.")
    try:
        with open(path) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the {what} is corrupt. Export it again.") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a JSON {type(content).__name__}, not an object; the {what} is corrupt.")
    return content


def require_folder(folder: str, what: str) -> str:
    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder!r} is not a folder; expected {what}.")
    return folder
