"""Verified checkpoints: a flipped bit is caught by the digest, quarantined, and the run falls back."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file

from jaxlora import errors
from jaxlora.training import checkpoint as ckpt_lib


def _random_state(step: int, rows: int = 64):
    # Random floats: incompressible, so a flipped bit on disk still decodes (the case a digest is for).
    rng = np.random.default_rng(step)
    return {"trainable": {"a": jnp.asarray(rng.standard_normal((rows, 64), dtype=np.float32))},
            "step": jnp.int32(step)}


def _read_state(step_dir):
    with ocp.StandardCheckpointer() as reader:
        return jax.tree.map(np.asarray, reader.restore(os.path.join(step_dir, "state")))


def flip_one_bit_in_state(step_dir) -> str:
    """Flip one bit of a state data file such that the checkpoint still decodes, to other values.

    orbax compresses its data files and also keeps bytes a restore never reads, so the bit is
    searched for: positions spread over each data file (largest first) are tried until one
    decodes without error to arrays that differ. Returns ``"<file>@<byte>"``.
    """
    original = _read_state(step_dir)
    files = [os.path.join(root, n) for root, _, names in os.walk(os.path.join(step_dir, "state"))
             if os.path.basename(root) == "d" for n in names]
    for path in sorted(files, key=os.path.getsize, reverse=True):
        with open(path, "rb") as f:
            clean = f.read()
        for at in np.linspace(0, len(clean) - 1, 24).astype(int):
            damaged = bytearray(clean)
            damaged[at] ^= 1 << 3
            with open(path, "wb") as f:
                f.write(damaged)
            try:
                changed = not all(np.array_equal(a, b) for a, b in
                                  zip(jax.tree.leaves(original), jax.tree.leaves(_read_state(step_dir))))
            except Exception:
                changed = False  # unreadable: the older, already handled kind of damage
            if changed:
                return f"{path}@{at}"
            with open(path, "wb") as f:
                f.write(clean)
    raise AssertionError(f"no single bit flip under {step_dir} decodes to other values")


def test_a_flipped_bit_that_still_decodes_is_caught_by_the_digest_and_the_step_is_quarantined(tmp_path, caplog):
    directory = tmp_path / "ckpt"
    ckpt = ckpt_lib.Checkpointer(directory, keep=3, async_save=False)
    for step in (1, 2):
        ckpt.save(step, _random_state(step), {"loader": [0, step, 0]})
    ckpt.close()
    flip_one_bit_in_state(directory / "2")

    # Without verification the damaged step restores "fine": the silent failure this guards against.
    unverified = ckpt_lib.Checkpointer(directory, keep=3, async_save=False, verify=False)
    target = ckpt_lib.abstract_like(_random_state(0))
    silent = unverified.restore(2, target)
    assert not silent.verified
    assert not np.array_equal(silent.state["trainable"]["a"], _random_state(2)["trainable"]["a"])
    unverified.close()

    ckpt = ckpt_lib.Checkpointer(directory, keep=3, async_save=False)
    with caplog.at_level(logging.WARNING, logger="jaxlora.training"):
        restored = ckpt.restore_latest(target)
    assert restored.step == 1 and restored.verified
    np.testing.assert_array_equal(restored.state["trainable"]["a"], _random_state(1)["trainable"]["a"])
    assert f"Checkpoint step 2 in {directory} does not match its digest: 1 array(s) differ" in caplog.text
    assert "['trainable']['a']" in caplog.text and "falling back to step 1" in caplog.text
    assert (directory / "corrupt" / "2").is_dir() and ckpt.steps == [1] and ckpt.verified_steps == [1]
    with pytest.raises(errors.CorruptCheckpointError):  # asked for directly, the step is an error
        ckpt_lib.Checkpointer(directory / "corrupt", async_save=False).restore(2, target)
    ckpt.close()


def test_other_shapes_are_an_incompatible_checkpoint_and_nothing_is_moved(tmp_path):
    directory = tmp_path / "ckpt"
    ckpt = ckpt_lib.Checkpointer(directory, async_save=False)
    ckpt.save(1, _random_state(1, rows=64), {"loader": [0, 1, 0]})
    with pytest.raises(errors.IncompatibleCheckpointError, match=r"saved float32\[64,64\], this run float32\[32,64\]"):
        ckpt.restore_latest(ckpt_lib.abstract_like(_random_state(0, rows=32)))
    assert ckpt.steps == [1] and not (directory / "corrupt").exists()
    ckpt.close()


def test_check_meta_can_reject_a_step_as_corrupt_or_as_another_run(tmp_path):
    directory = tmp_path / "ckpt"
    ckpt = ckpt_lib.Checkpointer(directory, keep=3, async_save=False)
    for step in (1, 2):
        ckpt.save(step, _random_state(step), {"loader": [0, step * 1000, 0]})
    target = ckpt_lib.abstract_like(_random_state(0))

    def loader_in_range(meta):
        if meta["loader"][1] > 1500:
            raise errors.CorruptCheckpointError(f"loader position {meta['loader'][1]} is past the epoch.")

    assert ckpt.restore_latest(target, check_meta=loader_in_range).step == 1
    assert (directory / "corrupt" / "2").is_dir()

    def other_run(meta):
        raise errors.IncompatibleCheckpointError("another run.")

    with pytest.raises(errors.IncompatibleCheckpointError):
        ckpt.restore_latest(target, check_meta=other_run)
    assert ckpt.steps == [1]
    ckpt.close()


def test_verify_off_writes_no_digest_and_an_old_checkpoint_without_one_restores_unverified(tmp_path, caplog):
    directory = tmp_path / "ckpt"
    ckpt = ckpt_lib.Checkpointer(directory, async_save=False, verify=False)
    ckpt.save(1, _random_state(1), {"loader": [0, 1, 0]})
    ckpt.close()
    meta = json.loads((directory / "1" / "meta" / "metadata").read_text())
    assert ckpt_lib.DIGEST_KEY not in meta
    ckpt = ckpt_lib.Checkpointer(directory, async_save=False)  # verify on, as by default
    with caplog.at_level(logging.WARNING, logger="jaxlora.training"):
        restored = ckpt.restore_latest(ckpt_lib.abstract_like(_random_state(0)))
    assert restored.step == 1 and not restored.verified and ckpt.verified_steps == []
    assert "has no digest" in caplog.text
    ckpt.close()


def test_digest_sees_every_leaf_dtype_and_shape():
    tree = {"f": jnp.ones((2, 2), jnp.bfloat16), "i": jnp.arange(3, dtype=jnp.int32),
            "k": jax.random.key_data(jax.random.key(0)), "b": jnp.array([True, False])}
    digest = ckpt_lib.state_digest(tree)
    assert digest["['f']"].startswith("bfloat16[2,2]:") and digest["['k']"].startswith("uint32[2]:")
    changed = dict(tree, i=jnp.array([0, 1, 3], jnp.int32))
    assert ckpt_lib.digest_mismatches(digest, changed) == ["['i']"]
    assert ckpt_lib.digest_mismatches(digest, tree) == []


def test_a_run_whose_latest_checkpoint_has_a_flipped_bit_falls_back_and_finishes_finite(tiny_factory, tmp_path, caplog):
    overrides = {"max_steps": 4, "eval_every": 2, "checkpoint.keep": 3}
    workdir = tmp_path / "run"
    from jaxlora import training

    training.train(tiny_factory("lora", **overrides), workdir)
    assert sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()) == [2, 4]
    flip_one_bit_in_state(workdir / "checkpoints" / "4")
    (workdir / "results.json").unlink()
    with caplog.at_level(logging.WARNING, logger="jaxlora.training"):
        results = training.train(tiny_factory("lora", **overrides), workdir)
    assert "Checkpoint step 4" in caplog.text and "does not match its digest" in caplog.text and "falling back to step 2" in caplog.text
    assert (workdir / "checkpoints" / "corrupt" / "4").is_dir()
    assert results["steps"] == 4
    arrays = load_file(str(workdir / "adapter" / "adapter.safetensors"))
    assert arrays and all(np.isfinite(a).all() and np.abs(a).max() < 1e3 for a in arrays.values())
