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


def _multi_axis(bias=True):
    """An attention-shaped tree: q (d, heads, head_dim), out (heads, head_dim, d), under integer keys."""
    import numpy as np

    q = {"kernel": np.ones((16, 2, 8), np.float32)}
    out = {"kernel": np.ones((2, 8, 16), np.float32)}
    if bias:
        q["bias"], out["bias"] = np.ones((2, 8), np.float32), np.ones(16, np.float32)
    return {"layers": {0: {"self_attn": {"q_proj": q, "o_proj": out}}, 1: {"self_attn": {"q_proj": q, "o_proj": out}}}}


def test_multi_axis_kernels_are_matrices_of_their_own_axes():
    targets = find_targets(_multi_axis(), jaxlora.AdapterConfig(rank=4, targets="all-linear"))
    by_name = {"/".join(map(str, p)): t for p, t in targets.items()}
    assert sorted(by_name) == ["layers/0/self_attn/o_proj", "layers/0/self_attn/q_proj",
                               "layers/1/self_attn/o_proj", "layers/1/self_attn/q_proj"]
    q, o = by_name["layers/0/self_attn/q_proj"], by_name["layers/0/self_attn/o_proj"]
    assert (q.shape, q.in_dims, q.out_dims) == ((16, 16), (0,), (1, 2))
    assert (o.shape, o.in_dims, o.out_dims) == ((16, 16), (0, 1), (2,))
    kernel = jax.random.normal(jax.random.key(0), (2, 8, 16))
    assert (o.from_matrix(o.as_matrix(kernel)) == kernel).all()


def test_integer_keys_and_peft_dotted_names():
    frozen = _multi_axis()
    cfg = jaxlora.AdapterConfig(rank=4, targets=("self_attn.q_proj", "layers.1.self_attn.o_proj"))
    found = sorted(find_targets(frozen, cfg))
    assert found == [("layers", 0, "self_attn", "q_proj"), ("layers", 1, "self_attn", "o_proj"),
                     ("layers", 1, "self_attn", "q_proj")]
    adapter = jaxlora.init(jax.random.key(0), frozen, cfg)  # integer keys all the way through
    assert adapter.trainable["lowrank"]["layers"][1]["self_attn"]["o_proj"]["a"].shape == (16, 4)
    merged = jaxlora.merge(frozen, adapter, cfg)
    assert merged["layers"][1]["self_attn"]["o_proj"]["kernel"].shape == (2, 8, 16)


def test_unreadable_kernel_names_the_layer_and_its_shape_and_kernel_axes_fixes_it():
    frozen = _multi_axis(bias=False)
    with pytest.raises(ValueError, match=r"Module layers/0/self_attn/o_proj has a kernel of shape \(2, 8, 16\), "
                                         r"which cannot be read as a matrix(.|\n)*kernel_axes"):
        find_targets(frozen, jaxlora.AdapterConfig(rank=4, targets="all-linear"))
    cfg = jaxlora.AdapterConfig(rank=4, targets="all-linear",
                                kernel_axes={"o_proj": 2, "q_proj": "btd,dnh->btnh"})
    shapes = {t.group: (t.shape, t.in_dims) for t in find_targets(frozen, cfg).values()}
    assert shapes == {"o_proj": ((16, 16), (0, 1)), "q_proj": ((16, 16), (0,))}
    with pytest.raises(ValueError, match=r"kernel_axes for module .*o_proj.*: 3 leading input axes"):
        find_targets(frozen, cfg.replace(kernel_axes={"o_proj": 3, "q_proj": 1}))
    with pytest.raises(ValueError, match=r"kernel axis 'n' is also an input and output axis"):
        find_targets(frozen, cfg.replace(kernel_axes={"o_proj": "btnh,nhd->btnd", "q_proj": 1}))


@pytest.mark.parametrize("variant", ["lora", "condlora", "bonly"])
def test_a_bare_layer_whose_params_are_the_root_is_a_target(variant):
    # nn.Dense(...).init(...)["params"] is {"kernel", "bias"}: the one module has the empty path.
    import flax.linen as nn
    import jax.numpy as jnp
    import numpy as np

    layer, x = nn.Dense(4), jnp.ones((2, 4))
    frozen = layer.init(jax.random.key(0), x)["params"]
    cfg = jaxlora.AdapterConfig(variant, rank=2, targets="all-linear")
    adapter = jaxlora.init(jax.random.key(1), frozen, cfg)
    adapter = adapter._replace(trainable=jax.tree.map(lambda t: t + 0.1, adapter.trainable))  # off zero-init
    with jaxlora.intercept():
        factored = layer.apply({"params": jaxlora.apply(frozen, adapter, cfg)}, x)
    merged = layer.apply({"params": jaxlora.merge(frozen, adapter, cfg)}, x)
    np.testing.assert_allclose(factored, merged, atol=1e-6)
    assert not np.allclose(merged, layer.apply({"params": frozen}, x))  # the adapter did change the layer
