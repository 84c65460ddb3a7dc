"""flatten/unflatten: inverse of each other on nested params, adapter-like leaves stay whole."""

from typing import NamedTuple

import flax
import numpy as np

from jaxlora.util import flatten, unflatten


class _Node(NamedTuple):
    a: np.ndarray
    b: np.ndarray


def test_round_trip_keeps_leaves_and_order():
    tree = {"bert": {"layer_0": {"kernel": np.ones((2, 3)), "bias": np.zeros(3)}}, "head": {"kernel": _Node(1, 2)}}
    flat = flatten(tree)
    assert list(flat) == [("bert", "layer_0", "kernel"), ("bert", "layer_0", "bias"), ("head", "kernel")]
    assert flat[("head", "kernel")] == _Node(1, 2)  # a non-Mapping node is a leaf
    back = unflatten(flat)
    assert back.keys() == tree.keys() and back["head"]["kernel"] is tree["head"]["kernel"]
    np.testing.assert_array_equal(back["bert"]["layer_0"]["kernel"], tree["bert"]["layer_0"]["kernel"])


def test_frozen_dicts_are_nodes_and_empty_dicts_vanish_like_flax():
    tree = flax.core.freeze({"a": {"b": 1, "empty": {}}, "c": 2})
    assert flatten(tree) == flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))
    assert unflatten(flatten(tree)) == {"a": {"b": 1}, "c": 2}
