"""Short listings of names for error messages: sorted, and cut off after a few."""

from __future__ import annotations

from typing import Iterable


def listing(names: Iterable[str], limit: int = 12, sep: str = ", ") -> str:
    """The sorted ``names`` joined by ``sep``; past ``limit`` of them, ``"... and N more"``.

    >>> listing(["value", "query", "key"])
    'key, query, value'
    >>> listing(["c", "a", "b", "d"], limit=2)
    'a, b, ... and 2 more'
    >>> print("Linear modules:\\n  " + listing(["x/query", "x/key"], sep="\\n  "))
    Linear modules:
      x/key
      x/query
    """
    names = sorted(names)
    shown = list(names[:limit])
    if len(names) > limit:
        shown.append(f"... and {len(names) - limit} more")
    return sep.join(shown)
