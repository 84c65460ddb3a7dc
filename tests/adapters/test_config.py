"""AdapterConfig: hashable, serialisable, validated."""

import json

import pytest

import jaxlora


def test_hashable_and_round_trips_through_json():
    cfg = jaxlora.AdapterConfig("mtlora", rank=4, alpha=16, targets=["query", "value"],
                                rank_pattern={"value": 2}, structure="dtsm", trainable="classifier")
    assert hash(cfg) == hash(jaxlora.AdapterConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))))
    assert cfg.targets == ("query", "value") and cfg.trainable == ("classifier",)
    assert jaxlora.AdapterConfig(targets="all-linear").targets == "all-linear"
    assert cfg.replace(rank=8).rank == 8 and cfg.rank == 4


@pytest.mark.parametrize("kw,msg", [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"targets": ()}, "targets is empty"),
])
def test_invalid_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        jaxlora.AdapterConfig(**kw)


def test_unknown_fields_and_variants_are_named():
    with pytest.raises(ValueError, match=r"Unknown AdapterConfig fields \['rnak'\]"):
        jaxlora.AdapterConfig.from_dict({"rnak": 8})
    with pytest.raises(ValueError, match="Unknown adapter variant 'dora'; known variants: aonly, bonly, condlora, lora, mtlora"):
        jaxlora.adapters.get_variant("dora")
