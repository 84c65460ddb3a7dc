"""Clean interrupts: SIGINT/SIGTERM set a flag, the loop stops between steps, saves the last finished
step (verified), writes every metric record, and the rerun matches an uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxlora import training
from jaxlora.training import checkpoint as ckpt_lib
from jaxlora.training import interrupts
from tests.training.conftest import REPO
from tests.training.test_train_cli import tiny_flags

OVERRIDES = {"max_steps": 6, "eval_every": 2, "checkpoint.keep": 10}


def _records(workdir, split="train"):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if r["split"] == split]


def _saved_steps(workdir):
    folder = workdir / "checkpoints"
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if folder.is_dir() else []


def _verified_restore(workdir, step):
    """The raw state of ``step``, after checking it against its digest (raises if it does not match)."""
    import orbax.checkpoint as ocp

    folder = workdir / "checkpoints"
    with ocp.StandardCheckpointer() as reader:
        raw = jax.tree.map(np.asarray, reader.restore(folder / str(step) / "state"))
    meta = json.loads((folder / str(step) / "meta" / "metadata").read_text())
    digests = sorted(v.split(":")[1] for v in meta[ckpt_lib.DIGEST_KEY]["leaves"].values())
    assert digests == sorted(v.split(":")[1] for v in ckpt_lib.state_digest(raw).values()), f"step {step}"
    return raw


def _assert_same_state(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def straight(tiny_model, tiny_glue, tmp_path_factory):
    """An uninterrupted run of OVERRIDES: its final state and results."""
    from tests.training.conftest import load_config, tiny

    tmp = tmp_path_factory.mktemp("straight")
    results = training.train(tiny(load_config("lora"), tiny_model, tiny_glue, tmp, **OVERRIDES), tmp / "run")
    return _verified_restore(tmp / "run", 6), results


@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGINT", "SIGTERM")], ids=["sigterm", "twice"])
def test_a_signal_mid_run_stops_between_steps_saves_and_the_rerun_matches(tiny_factory, tmp_path, straight,
                                                                         signals, capsys):
    workdir = tmp_path / "run"

    def signal_at_step_3(step):
        if step == 3:
            for name in signals:
                os.kill(os.getpid(), getattr(signal, name))  # handled at once: the handler only sets a flag

    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_factory("lora", **OVERRIDES), workdir, hooks=[signal_at_step_3])
    assert interrupts.requested() is None  # train() put the previous handlers back
    assert f"Interrupted at step 3: saved a checkpoint in {workdir / 'checkpoints'}" in capsys.readouterr().out
    assert _saved_steps(workdir) == [2, 3] and _records(workdir) == [1, 2, 3]
    _verified_restore(workdir, 3)

    results = training.train(tiny_factory("lora", **OVERRIDES), workdir)
    _assert_same_state(_verified_restore(workdir, 6), straight[0])
    assert results["test_metric"] == pytest.approx(straight[1]["test_metric"])
    assert _records(workdir) == [1, 2, 3, 4, 5, 6]


def test_sigint_is_handled_even_when_inherited_as_ignored(tiny_factory, tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a process started in the background
    try:
        with pytest.raises(KeyboardInterrupt):
            training.train(tiny_factory("lora", **OVERRIDES), tmp_path / "run",
                           hooks=[lambda step: step == 2 and os.kill(os.getpid(), signal.SIGINT)])
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert _saved_steps(tmp_path / "run") == [2]


# ------------------------------------------------------------------------------------------------
# SIGTERM at random moments of a real train.py process: compile, steps, validation, saves, exports.

# Each trial is a real train.py process, killed by SIGTERM at a random moment of its run (a fresh start, or
# a resume of the previous trial's checkpoint): it must exit 130 with the last finished step saved and
# verified, and every finished step's record. Trials are chained, CHAIN at a time on one workdir, each
# resuming the one before, and then a rerun finishes the run, which must equal the uninterrupted one; a
# trial whose run ended before the signal is such a finishing rerun. With the compilation cache (see
# tests/conftest.py) a tiny run is mostly process start-up, so the 20 trials run in CI.
TRIALS = int(os.environ.get("JAXLORA_SIGTERM_TRIALS", "20"))
CHAIN = 5


def _spawn(args, cwd):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAXLORA_TRACEBACK": "1"})


def _assert_finished_like(workdir, straight, what):
    _assert_same_state(_verified_restore(workdir, 6), straight[0])
    results = json.loads((workdir / "results.json").read_text())
    assert results["test_metric"] == pytest.approx(straight[1]["test_metric"]), what
    assert _records(workdir) == [1, 2, 3, 4, 5, 6], what


@pytest.mark.slow
def test_sigterm_at_a_random_moment_always_exits_130_with_the_last_finished_step_saved(
        tiny_model, tiny_glue, tmp_path, straight):
    args = ["--config", REPO / "configs" / "lora_sst2.py",
            *tiny_flags(tiny_model, tiny_glue, tmp_path / "cache", **OVERRIDES)]
    start = time.perf_counter()
    first = _spawn([*args, "--workdir", tmp_path / "uninterrupted"], tmp_path)
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    wall = time.perf_counter() - start  # start-up, compile, steps, validations, saves, test, exports
    _assert_finished_like(tmp_path / "uninterrupted", straight, "uninterrupted train.py")
    rng = random.Random(17)
    moments = [rng.uniform(0.05, 0.95) * wall for _ in range(TRIALS)]  # spread over the whole run
    chain, kills, interrupted = 0, 0, 0
    for trial, delay in enumerate(moments):
        workdir = tmp_path / f"chain{chain}"
        what = f"trial {trial} at {delay:.1f}s of {wall:.1f}s (chain {chain}, after {kills} kills)"
        proc = _spawn([*args, "--workdir", workdir], tmp_path)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=600)
        if proc.returncode == 0 and "results in" in out:  # the run had finished: a rerun after the kills
            _assert_finished_like(workdir, straight, what)
            chain, kills = chain + 1, 0
            continue
        assert proc.returncode == 130, f"{what}: rc {proc.returncode}\n{err[-3000:]}"
        assert "Traceback" not in err, f"{what}\n{err[-3000:]}"
        finished = _records(workdir)
        assert finished == list(range(1, len(finished) + 1)), (what, finished)  # every finished step's record
        if finished:
            assert _saved_steps(workdir)[-1] == finished[-1], (what, finished, _saved_steps(workdir))
            _verified_restore(workdir, finished[-1])
        interrupted, kills = interrupted + 1, kills + 1
        if kills == CHAIN or trial == len(moments) - 1:  # the rerun that finishes this chain's run
            rerun = _spawn([*args, "--workdir", workdir], tmp_path)
            assert rerun.wait(timeout=600) == 0, rerun.stderr.read()[-3000:]
            _assert_finished_like(workdir, straight, f"rerun of chain {chain}")
            chain, kills = chain + 1, 0
    assert interrupted >= TRIALS // 2, f"only {interrupted} of {TRIALS} signals came before the run ended"
