"""Which matrices an adapter acts on, and which leaves train in full.

Parameter trees are walked as flat ``{path_tuple: leaf}`` dicts. A *module path*
is the path of a ``kernel`` leaf without its last name, written ``/``-joined in
patterns and messages (``bert/encoder/layer_0/attention/query``).

Two matching rules, both documented on :class:`~jaxlora.adapters.config.AdapterConfig`:

* adapter targets match a module path by *suffix* (PEFT's rule): ``"query"``
  matches ``.../attention/query`` but ``"attention"`` does not;
* fully-trainable and excluded patterns match by a contiguous run of names:
  ``"classifier"`` matches ``classifier/kernel`` and ``classifier/out_proj/bias``,
  so excluding a head excludes every layer inside it.

``"re:<regex>"`` is a regular-expression search in either case.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from jaxlora.adapters.base import Path, Target
from jaxlora.adapters.config import ALL_LINEAR, AdapterConfig
from jaxlora.util import listing, trees
from jaxlora.util.trees import unflatten  # noqa: F401  (targets.unflatten is imported by core, interop)

_MAX_LISTED = 60


def flatten(tree: Mapping[str, Any]) -> dict[Path, Any]:
    """``{path_tuple: leaf}`` of a nested dict of params (boxes and FrozenDicts allowed).

    Adapter nodes stay whole: they are leaves here, not dicts.
    """
    return trees.flatten(nn.unbox(tree)) if tree else {}


def join(path: Path) -> str:
    return "/".join(path)


def matches_module(pattern: str, module_path: str) -> bool:
    """Suffix match (or regex search with ``re:``) of a ``/``-joined module path."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], module_path) is not None
    return module_path == pattern or module_path.endswith("/" + pattern)


def matches_leaf(pattern: str, leaf_path: str) -> bool:
    """Contiguous-run match (or regex search with ``re:``) of a ``/``-joined leaf path."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], leaf_path) is not None
    return f"/{pattern}/" in f"/{leaf_path}/"


def _listing(paths) -> str:
    return "\n  " + listing(paths, limit=_MAX_LISTED, sep="\n  ")


def linear_modules(flat: Mapping[Path, Any]) -> dict[Path, Any]:
    """Module path -> kernel for every 2-D ``kernel`` leaf."""
    return {p[:-1]: leaf for p, leaf in flat.items() if p and p[-1] == "kernel" and np.ndim(leaf) == 2}


def _first_override(pairs, module_path: str, default):
    for pattern, value in pairs:
        if matches_module(pattern, module_path):
            return value
    return default


def find_targets(frozen: Mapping[str, Any] | Mapping[Path, Any], config: AdapterConfig) -> dict[Path, Target]:
    """The matrices ``config`` adapts in ``frozen``, with their rank, alpha and scale.

    Raises ``ValueError`` when a pattern matches nothing (listing the modules that
    exist) or a rank exceeds ``min(d_in, d_out)``.

    >>> targets = find_targets(params, AdapterConfig(targets=("query", "value")))
    """
    flat = frozen if _is_flat(frozen) else flatten(frozen)
    modules = linear_modules(flat)
    if not modules:
        raise ValueError(
            "The parameter tree has no 2-D 'kernel' leaves to adapt. Pass the model's plain "
            "'params' collection (not {'params': ...}) of a model built from Dense layers."
        )
    names = {join(p): p for p in modules}
    # An excluded name covers everything inside it ("classifier" excludes RoBERTa's
    # classifier/dense), so exclusion uses the contiguous-run rule, not the suffix rule.
    excluded = {n for n in names if any(matches_leaf(x, n) for x in config.exclude)}

    if config.targets == ALL_LINEAR:
        chosen = [n for n in names if n not in excluded]
    else:
        chosen = []
        for pattern in config.targets:
            hits = [n for n in names if matches_module(pattern, n) and n not in excluded]
            if not hits:
                raise ValueError(
                    f"Adapter target pattern {pattern!r} matches no linear module. Use a name the "
                    f"module paths end with, a 're:<regex>', or 'all-linear'. Linear modules:{_listing(names)}"
                )
            chosen.extend(hits)

    targets = {}
    for name in sorted(set(chosen)):
        path = names[name]
        kernel = modules[path]
        d_in, d_out = np.shape(kernel)
        rank = int(_first_override(config.rank_pattern, name, config.rank))
        alpha = float(_first_override(config.alpha_pattern, name, config.alpha))
        if rank > min(d_in, d_out):
            raise ValueError(
                f"rank {rank} is larger than min(d_in, d_out) = {min(d_in, d_out)} for module {name} "
                f"of shape {(d_in, d_out)}: a low-rank update cannot have that rank. Lower `rank` "
                f"(or add a rank_pattern entry for this module)."
            )
        targets[path] = Target(
            path=path,
            shape=(d_in, d_out),
            dtype=jax.numpy.result_type(kernel),
            rank=rank,
            alpha=alpha,
            scale=config.scale_for(rank, alpha),
            group=path[-1],
        )
    if not targets:
        raise ValueError(f"'all-linear' found no linear module outside exclude={config.exclude}.")
    return targets


def find_trainable_leaves(
    frozen: Mapping[str, Any] | Mapping[Path, Any], config: AdapterConfig, targets: Mapping[Path, Target]
) -> list[Path]:
    """Leaf paths trained in full (``config.trainable``); a pattern matching nothing is an error."""
    flat = frozen if _is_flat(frozen) else flatten(frozen)
    names = {join(p): p for p in flat}
    target_kernels = {join(p + ("kernel",)) for p in targets}
    chosen = []
    for pattern in config.trainable:
        hits = [n for n in names if matches_leaf(pattern, n)]
        if not hits:
            raise ValueError(
                f"Trainable pattern {pattern!r} matches no parameter. Parameters:{_listing(names)}"
            )
        clash = sorted(set(hits) & target_kernels)
        if clash:
            raise ValueError(
                f"Trainable pattern {pattern!r} also matches adapted kernels {clash[:5]}: a matrix is "
                f"either adapted or trained in full. Narrow the pattern or the targets."
            )
        chosen.extend(hits)
    return [names[n] for n in sorted(set(chosen))]


def _is_flat(tree: Mapping) -> bool:
    return bool(tree) and all(isinstance(k, tuple) for k in tree)
