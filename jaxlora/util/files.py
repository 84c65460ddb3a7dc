"""JSON files written whole: a reader sees the old file or the new one, never half of either.

The document goes to a temporary file in the destination's folder, which is
then renamed over the destination (``os.replace`` is atomic on one file system).
The JSON is indented and key-sorted so that configs and results diff well.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_json(path: str | os.PathLike, content: Any) -> None:
    """Write ``content`` to ``path`` as indented, key-sorted JSON with a final newline, atomically.

    Missing parent folders are created.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "run", "results.json")
    >>> write_json(path, {"task": "sst2", "accuracy": 0.91})
    >>> print(open(path).read(), end="")
    {
      "accuracy": 0.91,
      "task": "sst2"
    }
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(content, file, indent=2, sort_keys=True)
            file.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
