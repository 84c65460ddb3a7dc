"""A decoder adapter trained by train.py, out to PyTorch: PEFT ``CAUSAL_LM`` folder and merged HF checkpoint.

One tiny causal-LM run (a 2-layer GQA Llama, LoRA on q/v, three steps on the JSONL task of
tests/tasks), then transformers' ``LlamaForCausalLM`` with ``PeftModel`` on ``workdir/peft_adapter``,
and transformers alone on the merged checkpoint, give jaxlora's logits (<= 1e-4) on a left-padded
batch and the same greedy tokens.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
import transformers

import jaxlora
import jaxlora.models as jm
from jaxlora.interop import load_adapter, save_merged
from jaxlora.models.testing import padded_batch
from tests.tasks.causal_lm_files import causal_config, word_tokenizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(workdir, model folder, results)`` of a three-step LoRA run on the tiny Llama."""
    from jaxlora.training import train

    folder = tmp_path_factory.mktemp("decoder_export")
    # A large learning rate, so three steps move the adapter far enough to be seen in the logits.
    config = causal_config(word_tokenizer(), folder, **{"max_steps": 3, "eval_every": 3,
                                                        "optimizer.learning_rate": 0.05})
    results = train(config, str(folder / "run"))
    return folder / "run", config.model, results


def _torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def _base(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def test_train_py_writes_a_peft_causal_lm_adapter_that_peft_model_runs_with_our_logits_and_tokens(trained):
    import peft

    workdir, model_folder, results = trained
    assert results["exported"]["peft_adapter"] == str(workdir / "peft_adapter")
    peft_config = json.loads((workdir / "peft_adapter" / "adapter_config.json").read_text())
    assert peft_config["task_type"] == "CAUSAL_LM" and sorted(peft_config["target_modules"]) == ["q_proj", "v_proj"]

    module, frozen = jm.from_pretrained(model_folder, task="causal_lm")
    adapter, cfg, _ = load_adapter(str(workdir / "adapter"))
    params = jaxlora.apply(frozen, adapter, cfg)
    ids, mask = padded_batch(vocab=13, pad=0, lengths=(7, 4, 2), length=7, left=True)
    ours = np.asarray(module.apply({"params": params}, ids, mask))
    valid = mask.astype(bool)  # logits at padded positions mean nothing (and differ between libraries)
    assert np.abs(ours - np.asarray(module.apply({"params": frozen}, ids, mask)))[valid].max() > 1e-3  # it trained

    reference = peft.PeftModel.from_pretrained(_base(model_folder), str(workdir / "peft_adapter")).eval()
    np.testing.assert_allclose(_torch_logits(reference, ids, mask)[valid], ours[valid], atol=1e-4, rtol=0)

    new = 8
    tokens = np.asarray(jm.generate(module, params, ids, mask, max_new_tokens=new))
    with torch.no_grad():
        theirs = reference.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                    max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    np.testing.assert_array_equal(tokens[:, -new:], theirs[:, -new:].numpy())


def test_the_merged_checkpoint_of_that_run_loads_in_transformers_alone(trained, tmp_path):
    workdir, model_folder, _ = trained
    module, frozen = jm.from_pretrained(model_folder, task="causal_lm")
    adapter, cfg, _ = load_adapter(str(workdir / "adapter"))
    ids, mask = padded_batch(vocab=13, pad=0, lengths=(7, 5, 3), length=7)
    ours = np.asarray(module.apply({"params": jaxlora.apply(frozen, adapter, cfg)}, ids, mask))

    save_merged(str(tmp_path / "merged"), module, frozen, adapter, cfg)
    assert not os.path.exists(tmp_path / "merged" / "adapter_config.json")  # a plain checkpoint, no PEFT
    merged = _base(str(tmp_path / "merged"))
    assert type(merged).__name__ == "LlamaForCausalLM"
    valid = mask.astype(bool)
    np.testing.assert_allclose(_torch_logits(merged, ids, mask)[valid], ours[valid], atol=1e-4, rtol=0)
    base = _torch_logits(_base(model_folder), ids, mask)
    assert np.abs(base - ours)[valid].max() > 1e-3  # the merged weights carry the trained adapter
