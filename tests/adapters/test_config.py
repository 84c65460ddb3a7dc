"""AdapterConfig: hashable, serialisable, validated."""

import dataclasses
import json

import re

import pytest

import jaxlora
from jaxlora.adapters import get_variant
from tests.adapters.helpers import builtin_variants, option_cases


def test_hashable_and_round_trips_through_json():
    cfg = jaxlora.AdapterConfig("mtlora", rank=4, alpha=16, targets=["query", "value"],
                                rank_pattern={"value": 2}, options={"structure": "dtsm"}, trainable="classifier")
    assert hash(cfg) == hash(jaxlora.AdapterConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))))
    assert cfg.targets == ("query", "value") and cfg.trainable == ("classifier",)
    assert jaxlora.AdapterConfig(targets="all-linear").targets == "all-linear"
    assert cfg.replace(rank=8).rank == 8 and cfg.rank == 4
    assert cfg.to_dict()["options"] == {"structure": "dtsm", "init": "kaiming"}
    assert cfg.options == get_variant("mtlora").Options(structure="dtsm")
    assert cfg.replace(options={"init": "identity"}).options.structure == "shim"  # a mapping starts from the defaults


# Configs as native adapter files wrote them before options moved into the variants: every option flat.
OLD_FLAT = {"variant": "lora", "rank": 4, "alpha": 8.0, "targets": ["query", "value"], "exclude": ["classifier"],
            "trainable": [], "rank_pattern": {}, "alpha_pattern": {}, "dropout": 0.0, "rslora": False,
            "structure": "shim", "mtlora_init": "kaiming", "rectangular": False}


@pytest.mark.parametrize("old,options", [
    ({"variant": "lora"}, {}),
    ({"variant": "mtlora", "structure": "ctcm", "mtlora_init": "identity"}, {"structure": "ctcm", "init": "identity"}),
    ({"variant": "condlora", "rectangular": True}, {"rectangular": True}),
    ({"variant": "bonly", "structure": "dtsm"}, {}),  # another variant's old field: dropped
])
def test_old_flat_option_fields_still_load(old, options):
    cfg = jaxlora.AdapterConfig.from_dict({**OLD_FLAT, **old})
    assert cfg == jaxlora.AdapterConfig(old["variant"], rank=4, exclude=("classifier",), options=options)


@pytest.mark.parametrize("variant", builtin_variants())
def test_every_variant_round_trips_with_its_options(variant):
    for options in option_cases(variant):
        cfg = jaxlora.AdapterConfig(variant, options=options)
        again = jaxlora.AdapterConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg and hash(again) == hash(cfg)
        assert dataclasses.asdict(cfg.options) == {**dataclasses.asdict(get_variant(variant).Options()), **options}


@pytest.mark.parametrize("kw,msg", [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"targets": ()}, "targets is empty"),
])
def test_invalid_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        jaxlora.AdapterConfig(**kw)


def test_options_are_checked_against_the_variant():
    with pytest.raises(ValueError, match=r"Unknown option 'structur' of adapter variant 'mtlora'; its options are "
                                         r"structure \(default 'shim'\), init \(default 'kaiming'\)\."):
        jaxlora.AdapterConfig("mtlora", options={"structur": "ctcm"})
    with pytest.raises(ValueError, match=r"Unknown option 'structure' of adapter variant 'lora'; its options are none"):
        jaxlora.AdapterConfig("lora", options={"structure": "ctcm"})
    with pytest.raises(ValueError, match=r"'lora' takes NoOptions options, got MTLoRAOptions"):
        jaxlora.AdapterConfig("mtlora").replace(variant="lora")
    with pytest.raises(TypeError, match="options must be a mapping"):
        jaxlora.AdapterConfig("mtlora", options="ctcm")
    with pytest.raises(ValueError, match="Unknown adapter variant 'dora'"):
        jaxlora.AdapterConfig("dora")


def test_describe_names_the_variant_and_its_options():
    assert jaxlora.AdapterConfig("lora").describe() == "lora"
    assert jaxlora.AdapterConfig("condlora").describe() == "condlora (rectangular=False)"
    assert jaxlora.AdapterConfig("mtlora", options={"structure": "icfm"}).describe() == "mtlora (structure=icfm, init=kaiming)"


def test_unknown_fields_and_variants_are_named():
    with pytest.raises(ValueError, match=r"Unknown AdapterConfig fields \['rnak'\]"):
        jaxlora.AdapterConfig.from_dict({"rnak": 8})
    # Every registered variant is listed: the built-in five, and any registered from outside (importing the
    # study runner registers its control variant, bonly_frame, for the whole test session).
    known = sorted(jaxlora.adapters.base.registered_variants())
    assert {"aonly", "bonly", "condlora", "lora", "mtlora"} <= set(known)
    with pytest.raises(ValueError, match=re.escape(f"Unknown adapter variant 'dora'; known variants: {', '.join(known)}.")):
        jaxlora.adapters.get_variant("dora")
