"""Target matching and the errors users see when it goes wrong."""

import jax
import pytest

import jaxlora
from jaxlora.adapters import find_targets, find_trainable_leaves
from jaxlora.adapters.targets import matches_leaf, matches_module
from tests.adapters.helpers import tiny_model


def test_suffix_regex_and_all_linear():
    _, frozen, _ = tiny_model(layers=2)
    by_name = find_targets(frozen, jaxlora.AdapterConfig(targets=("query", "value")))
    assert sorted("/".join(p) for p in by_name) == [
        "layer_0/query", "layer_0/value", "layer_1/query", "layer_1/value"]
    by_regex = find_targets(frozen, jaxlora.AdapterConfig(targets=("re:layer_1/(query|output)$",)))
    assert sorted("/".join(p) for p in by_regex) == ["layer_1/output", "layer_1/query"]
    every = find_targets(frozen, jaxlora.AdapterConfig(targets="all-linear"))
    assert len(every) == 8 and ("classifier",) not in every  # heads excluded by default
    assert matches_module("attention/query", "bert/encoder/layer_0/attention/query")
    assert not matches_module("attention", "bert/encoder/layer_0/attention/query")
    assert matches_leaf("classifier", "classifier/out_proj/bias")
    assert not matches_leaf("class", "classifier/kernel")


def test_exclude_covers_everything_inside_a_head():
    from tests.adapters.roberta_shapes import roberta_base_like

    every = find_targets(roberta_base_like(layers=1), jaxlora.AdapterConfig(targets="all-linear"))
    assert not [p for p in every if p[0] == "classifier"]  # RoBERTa's classifier/dense and out_proj
    assert len(every) == 6


def test_rank_and_alpha_overrides_and_scales():
    _, frozen, _ = tiny_model()
    cfg = jaxlora.AdapterConfig(rank=4, alpha=8, targets=("query", "value"),
                                rank_pattern={"value": 2}, alpha_pattern={"layer_1/query": 2})
    t = {"/".join(p): v for p, v in find_targets(frozen, cfg).items()}
    assert (t["layer_0/query"].rank, t["layer_0/query"].scale) == (4, 2.0)
    assert (t["layer_0/value"].rank, t["layer_0/value"].scale) == (2, 4.0)
    assert t["layer_1/query"].scale == 0.5
    rs = {"/".join(p): v for p, v in find_targets(frozen, cfg.replace(rslora=True)).items()}
    assert rs["layer_0/query"].scale == pytest.approx(8 / 2.0)


def test_pattern_matching_nothing_lists_modules():
    _, frozen, _ = tiny_model()
    with pytest.raises(ValueError, match=r"'q_proj' matches no linear module(.|\n)*layer_0/query"):
        jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig(targets=("q_proj",)))
    with pytest.raises(ValueError, match=r"Trainable pattern 'head' matches no parameter(.|\n)*classifier/kernel"):
        jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig(trainable=("head",)))


def test_rank_larger_than_matrix_is_an_error():
    _, frozen, _ = tiny_model(width=16)
    with pytest.raises(ValueError, match=r"rank 17 is larger than min\(d_in, d_out\) = 16"):
        jaxlora.init(jax.random.key(0), frozen, jaxlora.AdapterConfig(rank=17))


def test_trainable_leaves_cannot_overlap_targets():
    _, frozen, _ = tiny_model()
    cfg = jaxlora.AdapterConfig(targets=("query",), trainable=("query",))
    with pytest.raises(ValueError, match="either adapted or trained in full"):
        find_trainable_leaves(frozen, cfg, find_targets(frozen, cfg))


def test_no_kernels_is_an_error():
    with pytest.raises(ValueError, match="no 'kernel' leaves"):
        find_targets({"params": {"embedding": jax.numpy.ones((3, 4))}}, jaxlora.AdapterConfig())
