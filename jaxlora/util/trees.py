"""Nested dicts of parameters as flat ``{path_tuple: leaf}`` dicts, and back.

A *path* is the tuple of keys from the root to a leaf
(``("bert", "encoder", "layer_0", "attention", "query", "kernel")``). Any
``Mapping`` (``dict``, flax ``FrozenDict``) is a node; everything else,
including adapter nodes, boxed parameters and arrays, is a leaf. Empty dicts
vanish, as in ``flax.traverse_util.flatten_dict``.
"""

from __future__ import annotations

from typing import Any, Mapping

Path = tuple[str, ...]


def flatten(tree: Mapping, prefix: Path = ()) -> dict[Path, Any]:
    """Nested dict -> ``{path_tuple: leaf}``, with ``prefix`` put before every path.

    >>> flatten({"a": {"b": 1, "c": {"d": 2}}})
    {('a', 'b'): 1, ('a', 'c', 'd'): 2}
    >>> flatten({"kernel": 0}, prefix=("dense",))
    {('dense', 'kernel'): 0}
    """
    flat: dict[Path, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def unflatten(flat: Mapping[Path, Any]) -> dict:
    """``{path_tuple: leaf}`` -> nested dict (the inverse of :func:`flatten`).

    >>> unflatten({("a", "b"): 1, ("a", "c", "d"): 2})
    {'a': {'b': 1, 'c': {'d': 2}}}
    """
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree
