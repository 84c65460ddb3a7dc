"""Several processes, one run: train.py as two processes of 4 simulated CPU devices each (jax.distributed,
gloo collectives over 127.0.0.1) against one process of 8, on the same (data=2, fsdp=2, tensor=2) mesh.

One scenario serves every assertion, to keep the file cheap:

1. the one-process 8-device run and the first two-process launch start together; the two-process
   launch is killed (process 1 with SIGKILL, then process 0, as a scheduler tears down a job whose
   host died) as soon as its step-2 checkpoint is committed;
2. the same two commands again resume from the newest checkpoint both processes can read;
3. its losses equal the one-process run's step for step, and its last checkpoint restores, digest
   verified, in this (one-device) pytest process, equal to the one-process run's.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxlora import errors, training
from jaxlora.training import checkpoint as ckpt_lib
from jaxlora.training import distributed
from tests.training.conftest import REPO, load_config, tiny
from tests.training.test_train_cli import tiny_flags

STEPS = {"max_steps": 6, "eval_every": 6, "checkpoint.every": 2}
MESH = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args, workdir, log, devices, **env):
    # os.environ carries the suite's compilation cache (tests/conftest.py): the resumed launch reuses the
    # first one's programs.
    environ = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENIZERS_PARALLELISM": "false",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **env}
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        if name not in env:
            environ.pop(name, None)
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args, "--workdir", str(workdir)], cwd=REPO,
                            env=environ, stdout=log, stderr=subprocess.STDOUT)


def _two_processes(args, workdir, logs):
    address = f"127.0.0.1:{_free_port()}"
    return [_start(args, workdir, open(logs / f"process{i}.log", "w"), 4, JAX_COORDINATOR_ADDRESS=address,
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)) for i in range(2)]


def _wait(procs, log_paths):
    for proc, path in zip(procs, log_paths):
        try:
            proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, path.read_text()[-4000:]


def _train_losses(workdir):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


@pytest.fixture(scope="module")
def runs(tiny_model, tiny_glue, tmp_path_factory):
    """(one-process workdir, two-process workdir, logs folder, the step the two-process launch was killed after,
    the same run built in this one-device process)."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    args = ["--config", str(REPO / "configs" / "lora_sst2.py"),
            *tiny_flags(tiny_model, tiny_glue, tmp / "cache", **STEPS, **MESH)]
    one, two, logs = tmp / "one", tmp / "two", tmp / "logs"
    logs.mkdir()
    # The run in this one-device process, for the restore; it writes the tokenized cache the concurrent runs read.
    local = training.build(tiny(load_config("lora"), tiny_model, tiny_glue, tmp, **STEPS))

    single = _start(args, one, open(logs / "one.log", "w"), 8)
    first = _two_processes(args, two, logs)
    committed = two / "checkpoints" / "2"
    deadline = time.monotonic() + TIMEOUT
    while not committed.is_dir() and time.monotonic() < deadline and all(p.poll() is None for p in first):
        time.sleep(0.05)
    assert committed.is_dir(), (logs / "process0.log").read_text()[-4000:]
    first[1].send_signal(signal.SIGKILL)  # the host of process 1 dies...
    first[1].wait()
    first[0].send_signal(signal.SIGKILL)  # ...and the scheduler ends the job
    first[0].wait()
    killed_after = json.loads((two / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    shutil.copytree(logs, tmp / "first_launch_logs")

    second = _two_processes(args, two, logs)
    _wait([single, *second], [logs / "one.log", logs / "process0.log", logs / "process1.log"])
    return one, two, logs, killed_after, local


def test_two_processes_resume_after_a_kill_and_train_like_one_process_of_eight_devices(runs):
    one, two, logs, killed_after, _ = runs
    assert killed_after < STEPS["max_steps"]  # the first launch really stopped mid-run
    first = (logs.parent / "first_launch_logs" / "process0.log").read_text()
    assert "builds rows [0, 1, 2, 3] of each training batch of 8" in first  # its own share of every batch
    resumed = (logs / "process0.log").read_text()
    assert "Resumed from step" in resumed, resumed[-3000:]
    assert "Resumed from step" not in (logs / "process1.log").read_text()  # process 0 alone logs

    single, multi = _train_losses(one), _train_losses(two)
    assert sorted(single) == sorted(multi) == list(range(1, STEPS["max_steps"] + 1))
    np.testing.assert_allclose([multi[s] for s in sorted(multi)], [single[s] for s in sorted(single)], rtol=1e-5)
    results = json.loads((two / "results.json").read_text())
    assert results["devices"] == 8 and results["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert results["test_metric"] == pytest.approx(json.loads((one / "results.json").read_text())["test_metric"])
    # One checkpoint folder, written once (no process-1 copy, no leftover temporary step).
    leftovers = [p.name for p in (two / "checkpoints").iterdir() if not p.name.isdigit()]
    assert leftovers == [], leftovers


def test_the_two_process_checkpoint_restores_in_one_process(runs):
    one, two, _, _, local = runs
    target = ckpt_lib.abstract_like(local.initial_state, local.shardings.state)  # one device
    restored = {}
    for name, workdir in (("one", one), ("two", two)):
        checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", async_save=False)
        try:
            restored[name] = checkpointer.restore(STEPS["max_steps"], target)
        finally:
            checkpointer.close()
        assert restored[name].verified  # its arrays match the digest written at save time
    assert int(restored["two"].state.step) == STEPS["max_steps"]
    for got, want in zip(jax.tree.leaves(restored["two"].state.trainable), jax.tree.leaves(restored["one"].state.trainable)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


def test_which_environments_start_several_processes():
    assert distributed.initialize_options({}) is None
    assert distributed.initialize_options({"OMPI_COMM_WORLD_SIZE": "1", "TPU_WORKER_HOSTNAMES": "localhost"}) is None
    assert distributed.initialize_options({"TPU_WORKER_HOSTNAMES": "t1k-0,t1k-1"}) == {}
    assert distributed.initialize_options(
        {"TPU_WORKER_HOSTNAMES": "WARNING: could not determine TPU worker hostnames or IP addresses, please set"}
    ) is None
    assert distributed.initialize_options(
        {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    ) == {"num_processes": 4, "process_id": 3}
    with pytest.raises(errors.UserError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID not"):
        distributed.initialize_options({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476"})
    with pytest.raises(errors.UserError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        distributed.initialize_options({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two",
                                        "JAX_PROCESS_ID": "0"})

