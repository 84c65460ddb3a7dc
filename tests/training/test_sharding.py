"""8 simulated CPU devices with data + fsdp + tensor sharding train to the same losses as 1 device."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxlora import training
from jaxlora.training import sharding as sh
from tests.training.conftest import REPO

OVERRIDES = {"max_steps": 4, "eval_every": 4, "lora.dropout": 0.1, "model_dropout": 0.1}

_CHILD = textwrap.dedent(
    """
    import json, sys
    import jax
    sys.path.insert(0, {repo!r})
    from tests.training.conftest import tiny, load_config
    import pathlib
    from jaxlora import training

    assert jax.device_count() == 8, jax.devices()
    config = tiny(load_config("lora"), pathlib.Path({model!r}), pathlib.Path({glue!r}), pathlib.Path({tmp!r}),
                  **json.loads({overrides!r}))
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    config.mesh.adapter_fsdp_min_size = 64  # these tiny factors get the fsdp split of their weights too
    run = training.build(config)
    query = run.initial_state.trainable["lowrank"]["bert"]["encoder"]["layer_0"]["attention"]["query"]
    k = run.frozen["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]
    print("SPECS", json.dumps([list(x.sharding.spec) for x in (k, query["a"], query["b"])]))
    training.train(config, {workdir!r})
    """
)


def _losses(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["split"] == "train"]


def test_eight_devices_data_and_fsdp_match_one_device(tiny_factory, tiny_model, tiny_glue, tmp_path):
    assert jax.device_count() == 1
    single = tmp_path / "single"
    training.train(tiny_factory("lora", **OVERRIDES), single)

    sharded = tmp_path / "sharded"
    code = _CHILD.format(repo=str(REPO), model=str(tiny_model), glue=str(tiny_glue), tmp=str(tmp_path),
                         overrides=json.dumps(OVERRIDES), workdir=str(sharded))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    specs = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("SPECS"))[len("SPECS"):])
    # train.py places the factors like their weight: a along the kernel's input axis, b its output axis.
    assert specs == [["fsdp", "tensor"], ["fsdp", None], [None, "tensor"]]

    one, eight = _losses(single), _losses(sharded)
    assert len(one) == len(eight) == 4
    np.testing.assert_allclose(eight, one, rtol=1e-5)
    result_one = json.loads((single / "results.json").read_text())
    result_eight = json.loads((sharded / "results.json").read_text())
    assert result_eight["devices"] == 8 and result_eight["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert result_eight["test_metric"] == pytest.approx(result_one["test_metric"])


def test_mesh_sizes_and_uneven_dimensions():
    mesh = sh.make_mesh(data=-1)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match=r"needs 4 devices, but 1 are available"):
        sh.make_mesh(data=2, fsdp=2)
    # A dimension the mesh axis does not divide stays whole instead of failing.
    fake = type("FakeMesh", (), {"shape": {"data": 1, "fsdp": 4, "tensor": 1}})()
    assert sh.fit_spec(PartitionSpec("fsdp", "tensor"), (37, 8), fake) == PartitionSpec(None, "tensor")
    assert sh.fit_spec(PartitionSpec("fsdp"), (32, 8), fake) == PartitionSpec("fsdp", None)
