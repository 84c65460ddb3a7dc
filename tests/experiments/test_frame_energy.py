"""experiments/frame_energy.py: the energy share, and the control variant's frame (also under a trace)."""

import jax
import numpy as np

import jaxlora
from experiments import frame_energy
from jaxlora import interop


def test_energy_share_of_an_orthonormal_frame_is_the_projection_share():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(50, 6)) * np.array([5.0, 1, 1, 1, 1, 1])  # most energy on the first axis
    first = np.eye(6)[:, :1]
    share = frame_energy.energy_share(h, first)
    assert share == np.sum(h[:, 0] ** 2) / np.sum(h**2) and share > 0.5
    assert frame_energy.energy_share(h, np.eye(6)) == 1.0
    assert np.isnan(frame_energy.energy_share(h, frame_energy.orthonormal_basis(np.zeros((6, 2)))))


def test_bonly_frame_spans_the_lora_a_and_initialises_under_a_trace(tmp_path):
    frozen = {"layer": {"query": {"kernel": np.ones((6, 4), np.float32)}}}
    lora_cfg = jaxlora.AdapterConfig("lora", rank=2, targets=("query",))
    lora = jaxlora.init(jax.random.key(0), frozen, lora_cfg)
    interop.save_adapter(str(tmp_path / "adapter"), lora, lora_cfg)
    cfg = jaxlora.AdapterConfig("bonly_frame", rank=2, targets=("query",), options={"frame": str(tmp_path / "adapter")})
    shapes = jax.eval_shape(lambda key: jaxlora.init(key, frozen, cfg), jax.random.key(1))  # traced, as core does
    assert shapes.fixed["layer"]["query"]["a"].shape == (6, 2)
    adapter = jaxlora.init(jax.random.key(1), frozen, cfg)
    a, lora_a = adapter.fixed["layer"]["query"]["a"], lora.trainable["lowrank"]["layer"]["query"]["a"]
    np.testing.assert_allclose(a.T @ a, np.eye(2), atol=1e-5)
    np.testing.assert_allclose(a @ (a.T @ lora_a), lora_a, atol=1e-5)  # the same span
    assert sorted(adapter.trainable["lowrank"]["layer"]["query"]) == ["b"]
