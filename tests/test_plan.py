"""The plan command: train.py's step compiled for a TPU topology on abstract params, and its clear errors.

With libtpu installed (CI installs it) the step compiles with the real TPU compiler for 8
compile-only v5e chips; without it, for 8 simulated CPU devices in a subprocess. Either way one
tiny-Llama compile serves every figure test here.
"""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxlora import errors, models
from jaxlora.nn.quantize import is_quantized
from jaxlora.plan import __main__ as plan_cli
from jaxlora.plan import planner, topologies
from jaxlora.plan import run as plan_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny_llama")
    models.tiny_config("llama").save_pretrained(folder)
    return str(folder)


def _run_cli(*args, env=None, timeout=600):
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "jaxlora.plan", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def v5e8_plan(tiny_llama, tmp_path_factory):
    """The CLI on a tiny Llama, fsdp=8 over a v5e-8 slice, with 1 MiB per chip so that it cannot fit."""
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    proc = _run_cli("--model", tiny_llama, "--topology", "v5e-8", "--rank", 2, "--batch", "8x64", "--fsdp", 8,
                    "--hbm-gib", 1 / 1024, "--json", out)
    return proc, json.loads(out.read_text()) if out.exists() else None


def test_train_step_compiles_for_v5e8_with_frozen_weights_split_eight_ways(v5e8_plan, tiny_llama):
    proc, figures = v5e8_plan
    assert figures is not None, proc.stderr[-3000:]
    assert figures["topology"] == "v5e-8" and figures["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert set(figures) == {"fits", "hbm_bytes", "per_chip_bytes", "compile_s", "flops", "topology", "mesh"}
    assert set(figures["per_chip_bytes"]) == {"frozen", "adapter_and_optimizer", "temporaries", "total"}
    if topologies.has_libtpu():
        assert "the TPU compiler (libtpu)" in proc.stdout
    # Per-chip argument bytes of the frozen weights (from the compiled executable's input shardings)
    # against the whole frozen tree in bf16, over 8 chips.
    module = models.build_module(models.build.task_config(models.hf_config.read_config(tiny_llama), "causal_lm", None),
                                 "causal_lm")
    total = sum(math.prod(x.shape) * 2 for x in jax.tree.leaves(models.abstract_params(module)))
    assert figures["per_chip_bytes"]["frozen"] == pytest.approx(total / 8, rel=0.05)
    assert figures["flops"] > 0 and figures["per_chip_bytes"]["total"] >= figures["per_chip_bytes"]["frozen"]


def test_a_plan_that_does_not_fit_says_by_how_much_and_which_knob(v5e8_plan):
    proc, figures = v5e8_plan
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert figures["fits"] is False and figures["hbm_bytes"] == 2**20
    error_line, hint_line = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    over = (figures["per_chip_bytes"]["total"] - 2**20) / 2**20
    assert f"over by {over:.2f} MiB" in error_line, error_line
    assert "saves most" in hint_line and "estimated" in hint_line, hint_line
    assert any(knob in hint_line for knob in ("--remat", "--batch", "--quant")), hint_line


def test_unknown_topology_lists_the_known_ones(tiny_llama, capsys):
    with pytest.raises(errors.UnknownTopologyError) as info:
        planner.plan(tiny_llama, "v5e-7")
    for name in ("v5e-1", "v4-8", "v5e-8", "v5p-8", "v6e-8", "v5e-32", "v5p-64"):
        assert name in info.value.message
    assert plan_cli.main(["--model", tiny_llama, "--topology", "tpu-v9"]) == 2
    assert "error: Unknown TPU topology 'tpu-v9'. Known: v4-8, v4-16, v5e-1" in capsys.readouterr().err


def test_topology_table_matches_libtpu():
    if not topologies.has_libtpu():
        pytest.skip("libtpu is not installed")
    worker_hosts = os.environ.get("TPU_WORKER_HOSTNAMES")
    counts = {name: len(topologies.compile_devices(topologies.get(name), "tpu")[0])
              for name in ("v5e-1", "v5e-32", "v5p-64", "v4-8", "v6e-8")}
    assert counts == {"v5e-1": 1, "v5e-32": 32, "v5p-64": 32, "v4-8": 4, "v6e-8": 8}
    assert os.environ.get("TPU_WORKER_HOSTNAMES") == worker_hosts  # set only while libtpu loads (train.py reads it)


def test_run_config_is_a_valid_training_config():
    config = planner.run_config("llama3-8b", planner.model_config("llama3-8b", layers=2), batch=(8, 2048),
                                remat="full", mesh={"data": 2, "fsdp": 4})
    plan_run._validated(config)
    assert (config.task, config.batch_size, config.causal_lm.max_length) == ("causal_lm", 8, 2048)
    assert planner._remat_on(config) and not planner._remat_on(planner.run_config("x", planner.model_config("llama3-8b")))
    assert (config.mesh.data, config.mesh.fsdp, config.lora.rank) == (2, 4, 16)
    with pytest.raises(errors.ConfigError, match="ROWSxTOKENS"):
        planner.parse_batch("8by2048")


def test_abstract_run_matches_the_built_runs_shardings():
    """The plan's shardings are assembly.state_shardings' on abstract leaves: the same specs as on arrays."""
    hf = models.tiny_config("llama")
    config = planner.run_config("tiny", hf, rank=2, batch=(2, 16))
    run = planner.abstract_run(config, hf, jax.devices()[:1])
    module, frozen = models.from_config(hf, task="causal_lm")
    assert jax.tree.map(lambda s: s.shape, run.frozen) == jax.tree.map(np.shape, frozen)
    assert set(run.batch) == set(run.task.device_keys) and run.batch["input_ids"].shape == (2, 16)
    assert run.state.trainable["lowrank"]  # every linear layer adapted


def test_a_program_the_tpu_compiler_refuses_keeps_its_figures():
    """libtpu refuses a program larger than HBM at compile time; its message gives the temporaries."""
    hf = models.tiny_config("llama")
    run = planner.abstract_run(planner.run_config("tiny", hf, rank=2, batch=(2, 16)), hf, jax.devices()[:1])
    refusal = RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                           "temporaries (24.51G) exceeds available HBM (15.75G).")
    result = planner._out_of_memory(run, refusal, 1.0)
    assert result.per_chip["temporaries"] == int(24.51 * 2**30)
    assert result.per_chip["total"] == result.argument_bytes + result.per_chip["temporaries"]
    assert result.cost["compiler_hbm_bytes"] == int(15.75 * 2**30)
    assert planner._out_of_memory(run, RuntimeError("INTERNAL: something else"), 1.0) is None


@pytest.mark.parametrize("kind, ratio", [("int8", 0.53), ("nf4", 0.28)])
def test_quantized_kernels_per_chip_drop_to_the_stated_ratio(kind, ratio):
    hf = models.tiny_config("llama", hidden_size=64, intermediate_size=128, num_key_value_heads=4, vocab_size=128)
    run = planner.abstract_run(planner.run_config("tiny", hf, rank=2, batch=(2, 16), quant=kind), hf, jax.devices()[:1])
    quantized, plain = planner.quantized_kernel_bytes(run)
    assert quantized / plain == pytest.approx(ratio, abs=0.005)
    assert planner._quant_counts(run.frozen)[0] == 2 * 7  # 7 linear kernels per layer; the LM head stays bf16
    assert not is_quantized(run.frozen["lm_head"]["kernel"])


def test_a_scanned_plan_counts_every_layers_flops(tmp_path):
    # XLA's cost analysis counts a loop's body once: 4 scanned layers must still report the work of 4
    # layers, which is the unrolled step's (the same math).
    folder = tmp_path / "llama4"
    models.tiny_config("llama", num_hidden_layers=4).save_pretrained(folder)
    unrolled = planner.plan(str(folder), "v5e-1", rank=2, batch="2x16")
    scanned = planner.plan(str(folder), "v5e-1", rank=2, batch="2x16", scan=True)
    assert scanned.flops_basis == "scan_extrapolated" and unrolled.flops_basis == ""
    assert scanned.flops == pytest.approx(unrolled.flops, rel=1e-6)
    one_layer = planner.plan(str(folder), "v5e-1", rank=2, batch="2x16", layers=1)
    assert scanned.flops > 3 * one_layer.flops  # not one layer's count
    assert "counts a scanned loop once" in scanned.text()


def test_full_fine_tuning_plans_with_every_parameter_trained(tiny_llama):
    p = planner.plan(tiny_llama, "v5e-1", variant="full", batch="2x16")
    assert p.per_chip_bytes["frozen"] == 0  # nothing frozen: the step takes no frozen argument
    assert p.params["trainable"] == p.params["frozen"] > 0  # every parameter of the model is trained
