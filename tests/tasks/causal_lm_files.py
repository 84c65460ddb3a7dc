"""A tiny causal-LM setup shared by the causal-LM tests: a word tokenizer, a 2-layer Llama, a JSONL run config."""

from __future__ import annotations

import json

import jaxlora.models as jm

WORDS = ["<pad>", "<eos>", "<bos>", "a", "b", "c", "d", "yes", "no", "Q:", "A:", "negative", "positive"]


def word_tokenizer():
    """A word-level tokenizer over WORDS (BOS added, EOS known), with a tiny chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        chat_template="{% for m in messages %}{{ 'Q:' if m['role'] == 'user' else 'A:' }} {{ m['content'] }} "
                      "{% endfor %}{% if add_generation_prompt %}A: {% endif %}",
    )


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def causal_config(tokenizer, folder, **overrides):
    """A tiny causal-LM run: a 2-layer Llama saved in ``folder`` with the word tokenizer, 16 JSONL examples."""
    from jaxlora.training import default_config

    model = folder / "tiny_llama"
    if not model.exists():
        module, params = jm.from_config(jm.tiny_config("llama"), task="causal_lm")
        jm.save_pretrained(module, params, str(model))
        tokenizer.save_pretrained(str(model))
        rows = [{"prompt": f"Q: {a} {b}", "completion": "yes" if a == b else "no"} for a in "abcd" for b in "abcd"]
        write_jsonl(folder / "train.jsonl", rows)
    config = default_config()
    config.task = "causal_lm"
    config.model = str(model)
    config.causal_lm.train_file = str(folder / "train.jsonl")
    config.causal_lm.max_length = 16
    config.lora.targets = ("q_proj", "v_proj")
    config.lora.trainable = ()  # no head to train: the LM head is frozen
    config.batch_size = 4
    config.eval_batch_size = 8
    config.max_steps = 2
    config.eval_every = 2
    config.log_every = 1
    config.progress_bar = False
    config.plot = False
    config.update_from_flattened_dict(overrides)  # "optimizer.learning_rate"-style keys
    return config
