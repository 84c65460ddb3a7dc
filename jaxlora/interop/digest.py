"""Digests of arrays: a file's arrays are checked against the hashes written beside them.

A digest entry is ``"dtype[shape]:<sha256>"`` (128 bits of SHA-256 of the array's bytes, in
C order). Writers (native adapters, training checkpoints) store one entry per array; readers
hash what they decoded and compare, so damage that still decodes (a flipped bit in a tensor,
which no file format's parser notices) is an error instead of a silently different model.

The hash is of the host bytes of the whole array: a leaf sharded over processes is gathered
first, so the digest does not depend on the sharding a run restores onto.

>>> import numpy as np
>>> entry = array_digest(np.zeros((2, 3), np.float32))
>>> entry.split(":")[0], len(entry.split(":")[1])
('float32[2,3]', 32)
>>> mismatches({"w": entry}, {"w": array_digest(np.ones((2, 3), np.float32))})
['w']
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import jax
import numpy as np

__all__ = ["ALGORITHM", "array_digest", "signature", "tree_digest", "mismatches", "shape_mismatches"]

ALGORITHM = "sha256"


def signature(array) -> str:
    """``"dtype[shape]"`` of an array or ``ShapeDtypeStruct``.

    >>> import jax.numpy as jnp
    >>> signature(jax.ShapeDtypeStruct((4, 8), jnp.bfloat16)), signature(np.int32(3))
    ('bfloat16[4,8]', 'int32[]')
    """
    return f"{np.dtype(array.dtype).name}[{','.join(map(str, np.shape(array)))}]"


def _host(array) -> np.ndarray:
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        array = multihost_utils.process_allgather(array, tiled=True)  # each process hashes the whole leaf
    return np.asarray(array)


def array_digest(array) -> str:
    """``"dtype[shape]:<hash>"`` of one array (numpy, JAX, any sharding).

    >>> import jax.numpy as jnp
    >>> array_digest(jnp.arange(3)) == array_digest(np.arange(3, dtype=np.int32))
    True
    """
    data = _host(array)
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return f"{signature(data)}:{hashlib.sha256(raw).hexdigest()[:32]}"


def tree_digest(tree: Any) -> dict[str, str]:
    """``{leaf path: digest entry}`` of a pytree (paths as ``jax.tree_util.keystr`` spells them).

    >>> import jax.numpy as jnp
    >>> list(tree_digest({"a": {"w": jnp.ones(2)}, "step": jnp.int32(0)}))
    ["['a']['w']", "['step']"]
    """
    return {jax.tree_util.keystr(path): array_digest(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def mismatches(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """Names whose entries differ between two digests, or that only one of them has (sorted).

    >>> mismatches({"a": "x", "b": "y"}, {"a": "x", "c": "z"})
    ['b', 'c']
    """
    return sorted(name for name in set(expected) | set(actual) if expected.get(name) != actual.get(name))


def shape_mismatches(expected: Mapping[str, str], target: Mapping[str, Any]) -> list[str]:
    """``"name: saved <sig>, this run <sig>"`` for each name whose dtype/shape differs from ``target``'s.

    >>> import jax.numpy as jnp
    >>> saved = {"w": array_digest(np.zeros((8, 3), np.float32))}
    >>> shape_mismatches(saved, {"w": jax.ShapeDtypeStruct((16, 3), jnp.float32)})
    ['w: saved float32[8,3], this run float32[16,3]']
    """
    problems = []
    for name in sorted(set(expected) | set(target)):
        saved = expected[name].rpartition(":")[0] if name in expected else "nothing"
        here = signature(target[name]) if name in target else "nothing"
        if saved != here:
            problems.append(f"{name}: saved {saved}, this run {here}")
    return problems
