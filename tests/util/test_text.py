"""listing: sorted, cut after ``limit`` with the count of the rest."""

from jaxlora.util import listing


def test_short_lists_are_whole_and_sorted():
    assert listing({"value", "query"}) == "query, value"
    assert listing([]) == ""


def test_long_lists_say_how_many_are_left_out():
    names = [f"layer_{i:02d}" for i in range(15)]
    assert listing(names, limit=3) == "layer_00, layer_01, layer_02, ... and 12 more"
    assert listing(names, limit=15) == ", ".join(names)
    assert listing(names[:3], limit=1, sep="\n  ") == "layer_00\n  ... and 2 more"
