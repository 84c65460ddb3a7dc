"""train.py as users run it: every user error is one line and a hint with exit code 2, never a traceback;
reruns never destroy a previous run; the mission's command runs without --workdir."""

import contextlib
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest

from tests.training.conftest import REPO

TRAIN = str(REPO / "train.py")


def tiny_flags(model, glue, cache, **overrides):
    flags = {"model": model, "data_dir": glue, "cache_dir": cache, "max_length": 16, "min_bucket": 16,
             "batch_size": 8, "eval_batch_size": 8, "max_steps": 2, "eval_every": 2, "log_every": 1,
             "progress_bar": False, "plot": False, "optimizer.learning_rate": 0.01, "model_dropout": 0.0}
    flags.update(overrides)
    return [f"--config.{k}={v}" for k, v in flags.items()]


def run_train(args, cwd, timeout=300, restrict=(), **env):
    """train.py with ``args``; ``restrict``: ``("fsize", bytes)`` or ``("no-override", "")`` (see _RESTRICTED)."""
    launcher = [sys.executable, "-c", _RESTRICTED, *map(str, restrict)] if restrict else [sys.executable]
    return subprocess.run([*launcher, TRAIN, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu", **env})


def assert_one_line_error(proc, *fragments):
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert any(line.startswith("hint: ") for line in proc.stderr.splitlines()), proc.stderr[-2000:]
    return errors[0]


@pytest.fixture
def tiny(tiny_model, tiny_glue, tmp_path):
    """(config args for configs/lora_sst2.py on the tiny model and data, a workdir) ."""
    def make(model=tiny_model, glue=tiny_glue, **overrides):
        return ["--config", str(REPO / "configs" / "lora_sst2.py"),
                *tiny_flags(model, glue, tmp_path / "cache", **overrides)]

    return make


@contextlib.contextmanager
def mounted_tmpfs(path, options):
    """A tmpfs mounted at ``path``: a really full or read-only file system (root with mount rights only).

    Where mounting is refused (no root, or a container without the right), the test skips with this
    reason; its twin without privileges (a permission or a file-size limit, below) still runs."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount (a tmpfs) to make a full or read-only filesystem")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# A launcher that restricts itself, then execs train.py (a fork of the JAX-threaded test process must not
# run Python code): "fsize N" caps every file at N bytes (ulimit -f: a write beyond fails with EFBIG, as on
# a file system with a small maximum file size; Python ignores SIGXFSZ); "no-override" drops
# CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so root, too, obeys permissions.
_RESTRICTED = """
import ctypes, os, resource, sys
kind, value, *argv = sys.argv[1:]
if kind == "fsize":
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(value), int(value)))
elif kind == "no-override" and os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
os.execv(sys.executable, [sys.executable, *argv])
"""


def _copy_model(tiny_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    return folder


def _copy_glue(tiny_glue, tmp_path):
    folder = tmp_path / "glue"
    shutil.copytree(tiny_glue, folder)
    return folder


class _RunsCode:
    """A pickle that would run code when unpickled (never executed: torch refuses it under weights_only=True)."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/jaxlora-pwned",))


# ------------------------------------------------------------------------------------------------
# Point 5 of issue 17: each case prints one line naming its file, exit code 2, no traceback.


def test_non_utf8_data_names_the_file_and_line(tiny, tiny_glue, tmp_path):
    glue = _copy_glue(tiny_glue, tmp_path)
    with open(glue / "SST-2" / "train.tsv", "ab") as f:
        f.write(b"caf\xe9 au lait\t1\n")
    lines = (glue / "SST-2" / "train.tsv").read_bytes().count(b"\n")
    proc = run_train([*tiny(glue=glue), "--workdir", tmp_path / "run"], tmp_path)
    assert_one_line_error(proc, f"{glue / 'SST-2' / 'train.tsv'}, line {lines}", "is not UTF-8")


@pytest.fixture(scope="module")
def bad_values_run(tiny_model, tiny_glue, tmp_path_factory):
    """One train.py run with two bad values (alpha 0, a negative learning rate): both named in its one line."""
    tmp = tmp_path_factory.mktemp("bad_values")
    args = ["--config", REPO / "configs" / "lora_sst2.py",
            *tiny_flags(tiny_model, tiny_glue, tmp / "cache", **{"lora.alpha": 0, "optimizer.learning_rate": -0.001}),
            "--workdir", tmp / "run"]
    return run_train(args, tmp), tmp / "run"


def test_alpha_zero_is_refused_up_front(bad_values_run):
    proc, workdir = bad_values_run
    assert_one_line_error(proc, "config.lora.alpha=0.0 must be positive")
    assert not (workdir / "checkpoints").exists()  # refused before anything ran


def test_truncated_model_safetensors_names_the_file(tiny, tiny_model, tmp_path):
    model = _copy_model(tiny_model, tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    proc = run_train([*tiny(model=model), "--workdir", tmp_path / "run"], tmp_path)
    assert_one_line_error(proc, f"{weights} cannot be read as safetensors", "truncated or corrupt")


def test_a_pickle_that_runs_code_is_refused_and_never_suggests_weights_only_false(tiny, tiny_model, tmp_path):
    model = _copy_model(tiny_model, tmp_path)
    os.remove(model / "model.safetensors")
    with open(model / "pytorch_model.bin", "wb") as f:
        pickle.dump(_RunsCode(), f)
    proc = run_train([*tiny(model=model), "--workdir", tmp_path / "run"], tmp_path)
    assert_one_line_error(proc, f"{model / 'pytorch_model.bin'} cannot be loaded as plain PyTorch tensors",
                          "never unpickles")
    assert "weights_only=False" not in proc.stdout + proc.stderr
    assert "safetensors" in proc.stderr


def test_a_file_as_workdir_is_refused_before_the_model_loads(tiny, tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    proc = run_train([*tiny(model=tmp_path / "no-such-model"), "--workdir", tmp_path / "taken"], tmp_path)
    assert_one_line_error(proc, f"The workdir {tmp_path / 'taken'} is a file, not a folder")


def test_a_read_only_workdir_is_refused_before_the_model_loads(tiny, tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as folder:
        proc = run_train([*tiny(model=tmp_path / "no-such-model"), "--workdir", folder / "run"], tmp_path)
    assert_one_line_error(proc, str(folder / "run"), "Read-only file system")


def test_a_workdir_without_write_permission_is_refused_before_the_model_loads(tiny, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = run_train([*tiny(model=tmp_path / "no-such-model"), "--workdir", folder / "run"], tmp_path,
                         restrict=("no-override", ""))
    finally:
        folder.chmod(0o755)
    assert_one_line_error(proc, str(folder / "run"), "Permission denied")


def test_disk_full_says_how_much_was_being_written_and_where(tiny, tmp_path):
    with mounted_tmpfs(tmp_path / "small", "size=24k") as folder:
        proc = run_train([*tiny(), "--workdir", folder / "run"], tmp_path)
    line = assert_one_line_error(proc, "No space left on device writing checkpoint step 2 (", f"to {folder / 'run'}")
    assert " kB)" in line and "free there now" in line


def test_a_file_size_limit_says_how_much_was_being_written_and_where(tiny, tmp_path):
    # 8 kB: above the tokenization caches of the tiny data (about 6 kB), below a checkpoint's files. The
    # compilation cache is off in this run: its entries are larger, and a cut-off one must not be shared.
    proc = run_train([*tiny(), "--workdir", tmp_path / "run"], tmp_path, restrict=("fsize", 8000),
                     JAX_ENABLE_COMPILATION_CACHE="false")
    line = assert_one_line_error(proc, "File too large writing checkpoint step 2 (", f"to {tmp_path / 'run'}",
                                 "(ulimit -f)")
    assert " kB)" in line


def test_a_training_row_labelled_minus_one_is_refused_not_trained_as_a_class(tiny, tiny_glue, tmp_path):
    glue = _copy_glue(tiny_glue, tmp_path)
    with open(glue / "SST-2" / "train.tsv", "a") as f:
        f.write("a film of no label \t-1\n")
    proc = run_train([*tiny(glue=glue), "--workdir", tmp_path / "run"], tmp_path)
    assert_one_line_error(proc, str(glue / "SST-2" / "train.tsv"), "label -1 is not one of SST-2's classes 0..1")


def test_a_negative_learning_rate_is_refused(bad_values_run):
    assert_one_line_error(bad_values_run[0], "config.optimizer.learning_rate=-0.001 must be positive")


def test_hub_unreachable_says_to_use_the_offline_config(tmp_path):
    config = REPO / "configs" / "condlora_sst2.py"
    proc = run_train(["--config", config], tmp_path, HF_HUB_OFFLINE="1")
    assert_one_line_error(proc, "Hugging Face Hub cannot be used")
    assert f"Use --config {config}:offline" in proc.stderr and "--config.model=/path/to/model" in proc.stderr
    assert f"Writing to {os.path.join('runs', 'condlora_sst2')}" in proc.stdout


def test_traceback_flag_and_env_show_the_full_traceback(tiny, tmp_path):
    args = [*tiny(**{"lora.alpha": 0}), "--workdir", tmp_path / "run"]
    assert "Traceback" in run_train([*args, "--traceback"], tmp_path).stderr
    assert "Traceback" in run_train(args, tmp_path, JAXLORA_TRACEBACK="1").stderr


# ------------------------------------------------------------------------------------------------
# Faults a rerun repairs by itself (exit 0, a warning naming the file), and reruns that never destroy:
# each starts from a copy of one finished run (4 steps, checkpoints 2 and 4, its tokenization cache).

FINISHED = {"max_steps": 4, "checkpoint.keep": 3}


@pytest.fixture(scope="module")
def finished_run(tiny_model, tiny_glue, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    args = ["--config", REPO / "configs" / "lora_sst2.py",
            *tiny_flags(tiny_model, tiny_glue, tmp / "cache", **FINISHED), "--workdir", tmp / "run"]
    proc = run_train(args, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


@pytest.fixture
def finished(finished_run, tmp_path):
    """A copy of the finished run in ``tmp_path / "run"``, its cache in ``tmp_path / "cache"`` (where ``tiny`` looks)."""
    shutil.copytree(finished_run / "cache", tmp_path / "cache")
    shutil.copytree(finished_run / "run", tmp_path / "run")
    return tmp_path / "run"


def test_a_truncated_tokenization_cache_is_rebuilt(tiny, finished, tmp_path):
    caches = sorted((tmp_path / "cache").glob("sst2-train-*.npz"))
    assert len(caches) == 1
    caches[0].write_bytes(caches[0].read_bytes()[:100])
    proc = run_train([*tiny(), "--workdir", tmp_path / "second"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"The tokenization cache {caches[0]} is unreadable" in proc.stderr and "rebuilding it" in proc.stderr
    assert caches[0].stat().st_size > 100  # rebuilt, so the next run reads it


def test_an_out_of_range_loader_position_falls_back_to_the_previous_step(tiny, finished, tmp_path):
    args = [*tiny(**FINISHED), "--workdir", finished]
    meta_file = tmp_path / "run" / "checkpoints" / "4" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["loader"] = [0, 10**9, 0]
    meta_file.write_text(json.dumps(meta))
    (tmp_path / "run" / "results.json").unlink()
    proc = run_train(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Checkpoint step 4" in proc.stderr and "loader position [0, 1000000000, 0]" in proc.stderr
    assert "falling back to step 2" in proc.stderr
    assert (tmp_path / "run" / "checkpoints" / "corrupt" / "4").is_dir()


# ------------------------------------------------------------------------------------------------
# Reruns never destroy.


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rerun_with_another_rank_is_refused_and_touches_nothing(tiny, finished, tmp_path):
    workdir = finished
    before = _snapshot(workdir)
    proc = run_train([*tiny(**{"lora.rank": 16}), "--workdir", workdir], tmp_path)
    assert_one_line_error(proc, "lora.rank: 8 in the checkpoints, 16 in this config", "are from another run")
    assert "--config.resume=False" in proc.stderr and "new --workdir" in proc.stderr
    assert _snapshot(workdir) == before  # results.json byte-identical, no checkpoint moved, nothing new
    proc = run_train([*tiny(**{"lora.targets": "all-linear"}), "--workdir", workdir], tmp_path)
    assert_one_line_error(proc, "lora.targets: ['query', 'value'] in the checkpoints, 'all-linear' in this config")
    assert _snapshot(workdir) == before


def test_starting_over_moves_the_previous_outputs_to_previous(tiny, finished, tmp_path):
    workdir = finished
    before = _snapshot(workdir)
    proc = run_train([*tiny(**{"lora.rank": 4, "resume": False}), "--workdir", workdir], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (moved,) = (workdir / "previous").iterdir()
    assert f"Starting over: moved the previous run's outputs to {moved}" in proc.stdout
    assert _snapshot(moved) == before  # every file of the old run, byte for byte
    assert json.loads((workdir / "results.json").read_text())["config"]["lora"]["rank"] == 4


# ------------------------------------------------------------------------------------------------
# The mission's own command.


@pytest.mark.slow
def test_the_mission_command_runs_without_workdir_and_says_where_it_wrote(glue_dir, tmp_path):
    config = REPO / "configs" / "condlora_sst2.py"
    proc = run_train(["--config", f"{config}:offline", "--config.max_steps=5"], tmp_path, timeout=900,
                     GLUE_DIR=str(glue_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    workdir = tmp_path / "runs" / "condlora_sst2_offline"
    assert "Writing to runs/condlora_sst2_offline (the default for this config" in proc.stdout
    assert f"results in {workdir / 'results.json'}" in proc.stdout
    assert json.loads((workdir / "results.json").read_text())["steps"] == 5
