"""train.py with config.scan_layers=True: the same run as unrolled, the same checkpoints and exports.

Dropout is off (a scan draws each layer's mask from a split key: the same distribution, other
draws), so the losses must agree to float32 rounding.
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file

from jaxlora import training


def _losses(workdir):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_a_scanned_run_trains_checkpoints_and_exports_like_the_unrolled_one(tiny_factory, tmp_path):
    runs = {}
    for name, overrides in (("unrolled", {}), ("scanned", {"scan_layers": True, "remat": "dots_saveable"})):
        runs[name] = tmp_path / name
        training.train(tiny_factory("condlora", **overrides), runs[name])
    assert _losses(runs["scanned"]) == pytest.approx(_losses(runs["unrolled"]), rel=1e-5)

    # The checkpointed state (adapter, optimiser moments) has the unrolled run's per-layer keys.
    states = [ocp.StandardCheckpointer().restore(runs[name] / "checkpoints" / "2" / "state") for name in runs]
    assert jax.tree.structure(states[0]["trainable"]) == jax.tree.structure(states[1]["trainable"])
    for a, b in zip(jax.tree.leaves(states[0]["trainable"]), jax.tree.leaves(states[1]["trainable"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)

    # The native file's config has no layer_stacks: it fits both layouts (its digest differs by the rounding).
    adapters = {name: json.loads((runs[name] / "adapter" / "adapter_config.json").read_text()) for name in runs}
    assert adapters["scanned"]["config"] == adapters["unrolled"]["config"]
    if (runs["unrolled"] / "peft_adapter").exists():  # CondLoRA exports to PEFT as per-layer LoRA factors
        tensors = {name: load_file(os.path.join(runs[name], "peft_adapter", "adapter_model.safetensors"))
                   for name in runs}
        assert tensors["scanned"].keys() == tensors["unrolled"].keys()
        for key, value in tensors["unrolled"].items():
            np.testing.assert_allclose(tensors["scanned"][key], value, rtol=1e-5, atol=1e-7, err_msg=key)
