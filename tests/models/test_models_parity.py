"""Parity with transformers (PyTorch, CPU, fp32) on the same random weights, padded batches.

Each reference model is built by transformers, saved with its own
``save_pretrained`` and loaded by ``jaxlora.models.from_pretrained``, so the
whole loading path (key renames, transposes, prefixes) is under test too.
``initializer_range`` is raised to 0.2 so activations are O(1) rather than tiny.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import jaxlora.models as jm
from jaxlora.models.testing import padded_batch, save_torch_reference, torch_logits

TOL = 1e-5


def _load(folder, **kwargs):
    return jm.from_pretrained(str(folder), **kwargs)


def _jax_logits(module, params, ids, mask, **kwargs):
    # One jit compile is ~5x cheaper than op-by-op dispatch compiling every primitive.
    kwargs = {k: jnp.asarray(v) for k, v in kwargs.items()}
    return np.asarray(jax.jit(module.apply)({"params": params}, jnp.asarray(ids), jnp.asarray(mask), **kwargs))


def test_bert_sequence_classification(tmp_path):
    config = jm.tiny_config("bert", initializer_range=0.2, num_labels=3)
    ref = save_torch_reference(transformers.BertForSequenceClassification, config, tmp_path)
    module, params = _load(tmp_path, task="sequence_classification")
    ids, mask = padded_batch(config.vocab_size, config.pad_token_id)
    types = (np.arange(ids.shape[1])[None] >= 4).astype(np.int64).repeat(3, 0)  # sentence pairs
    ours = _jax_logits(module, params, ids, mask, token_type_ids=types)
    theirs = torch_logits(ref, ids, mask, token_type_ids=types)
    assert ours.shape == (3, 3)
    assert np.abs(ours - theirs).max() <= TOL
    assert np.abs(theirs).max() > 0.1  # the comparison is not between near-zero numbers


@pytest.mark.parametrize("task,num_labels", [("sequence_classification", 2), ("regression", 1)])
def test_roberta_classification_and_regression(tmp_path, task, num_labels):
    config = jm.tiny_config("roberta", initializer_range=0.2, num_labels=num_labels)
    ref = save_torch_reference(transformers.RobertaForSequenceClassification, config, tmp_path)
    module, params = _load(tmp_path, task=task)
    assert set(params["classifier"]) == {"dense", "out_proj"}  # RoBERTa's two-layer head
    assert "pooler" not in params["roberta"]  # as HF's add_pooling_layer=False
    ids, mask = padded_batch(config.vocab_size, config.pad_token_id)
    ours = _jax_logits(module, params, ids, mask)
    theirs = torch_logits(ref, ids, mask)
    assert ours.shape == (3, num_labels)
    assert np.abs(ours - theirs).max() <= TOL
    if task == "regression":
        assert module.config.problem_type == "regression"


def test_roberta_position_ids_skip_padding():
    ids = jnp.array([[0, 7, 8, 2, 1, 1]])
    np.testing.assert_array_equal(jm.bert.roberta_position_ids(ids, padding_idx=1), [[2, 3, 4, 5, 1, 1]])


LLAMA3_ROPE = {
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
    "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
}


@pytest.mark.parametrize(
    "overrides",
    [
        dict(num_key_value_heads=2, rope_parameters=LLAMA3_ROPE),
        dict(num_key_value_heads=1, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
             tie_word_embeddings=True, attention_bias=True),
    ],
    ids=["gqa-llama3-rope", "mqa-linear-rope-tied-bias"],
)
def test_llama_causal_lm(tmp_path, overrides):
    config = jm.tiny_config("llama", initializer_range=0.2, **overrides)
    ref = save_torch_reference(transformers.LlamaForCausalLM, config, tmp_path)
    module, params = _load(tmp_path, task="causal_lm")
    assert ("lm_head" in params) != config.tie_word_embeddings
    assert dict(module.spec.rope)["rope_type"] == overrides["rope_parameters"]["rope_type"]
    ids, mask = padded_batch(config.vocab_size, config.pad_token_id, length=12, lengths=(12, 7, 3))
    ours = _jax_logits(module, params, ids, mask)
    theirs = torch_logits(ref, ids, mask)
    assert ours.shape == (3, 12, config.vocab_size)
    # Logits at padding positions are arbitrary in both frameworks; compare where tokens are real.
    assert np.abs(ours - theirs)[mask == 1].max() <= TOL


def test_llama_left_padding_with_positions_from_mask(tmp_path):
    config = jm.tiny_config("llama", initializer_range=0.2, rope_parameters=LLAMA3_ROPE)
    ref = save_torch_reference(transformers.LlamaForCausalLM, config, tmp_path)
    module, params = _load(tmp_path)
    ids, mask = padded_batch(config.vocab_size, config.pad_token_id, length=10, lengths=(10, 6, 2), left=True)
    positions = np.asarray(jm.position_ids_from_mask(jnp.asarray(mask)))
    ours = _jax_logits(module, params, ids, mask, position_ids=positions)
    theirs = torch_logits(ref, ids, mask, position_ids=positions)
    assert np.abs(ours - theirs)[mask == 1].max() <= TOL
    # With positions counted from each row's first token, a left-padded row equals the unpadded one.
    alone = _jax_logits(module, params, ids[2:, -2:], mask[2:, -2:])
    np.testing.assert_allclose(ours[2, -2:], alone[0], atol=TOL)


def test_qwen2_qkv_bias_and_llama_sequence_classification(tmp_path):
    config = jm.tiny_config("qwen2", initializer_range=0.2)
    ref = save_torch_reference(transformers.Qwen2ForCausalLM, config, tmp_path / "qwen")
    module, params = _load(tmp_path / "qwen")
    attn = params["model"]["layers_0"]["self_attn"]
    assert "bias" in attn["q_proj"] and "bias" not in attn["o_proj"]
    ids, mask = padded_batch(config.vocab_size, config.pad_token_id)
    assert np.abs(_jax_logits(module, params, ids, mask) - torch_logits(ref, ids, mask))[mask == 1].max() <= TOL

    config = jm.tiny_config("llama", initializer_range=0.2, num_labels=4)
    ref = save_torch_reference(transformers.LlamaForSequenceClassification, config, tmp_path / "cls")
    module, params = _load(tmp_path / "cls", task="sequence_classification")
    ours = _jax_logits(module, params, ids, mask)
    assert ours.shape == (3, 4)
    assert np.abs(ours - torch_logits(ref, ids, mask)).max() <= TOL
