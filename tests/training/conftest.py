"""Fixtures for the training tests: a tiny GLUE folder, a tiny BERT with its own tokenizer, tiny configs."""

from __future__ import annotations

import os
import pathlib
import random

import numpy as np
import pytest

from tests.adapters.helpers import builtin_variants

REPO = pathlib.Path(__file__).resolve().parents[2]
# Every built-in variant, then full fine-tuning (from the registry: a new variant file is covered).
METHODS = (*builtin_variants(), "full")

POSITIVE = ["good", "great", "fine", "superb", "lovely", "fun"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]
FILLER = ["the", "a", "film", "movie", "plot", "was", "is", "very", "quite", "and", "acting", "story"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _sentence(rng: random.Random) -> tuple[str, int]:
    label = rng.randint(0, 1)
    words = rng.choices(FILLER, k=rng.randint(2, 9)) + rng.choices(POSITIVE if label else NEGATIVE, k=rng.randint(1, 2))
    rng.shuffle(words)
    return " ".join(words), label


def write_sst2(folder: pathlib.Path, n_train: int = 80, n_dev: int = 24, seed: int = 0) -> pathlib.Path:
    """A GLUE-layout SST-2 folder (``folder/SST-2/{train,dev}.tsv``) of made-up sentences."""
    rng = random.Random(seed)
    task = folder / "SST-2"
    task.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        rows = [_sentence(rng) for _ in range(n)]
        (task / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in rows))
    return folder


def write_stsb(folder: pathlib.Path, n_train: int = 40, n_dev: int = 16, seed: int = 0) -> pathlib.Path:
    """``folder/STS-B/{train,dev}.tsv`` as a Hugging Face export: sentence1, sentence2, label (0-5)."""
    rng = random.Random(seed)
    task = folder / "STS-B"
    task.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        rows = [(_sentence(rng)[0], _sentence(rng)[0], round(rng.uniform(0, 5), 2)) for _ in range(n)]
        (task / f"{name}.tsv").write_text("sentence1\tsentence2\tlabel\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows))
    return folder


@pytest.fixture(scope="session")
def tiny_glue(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("glue")
    write_stsb(folder)
    return write_sst2(folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> pathlib.Path:
    """A random 2-layer BERT (hidden 32, vocab 99) saved as a HF folder, with a word-level tokenizer."""
    from transformers import BertTokenizerFast

    import jaxlora.models as models

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = SPECIAL + sorted(set(POSITIVE + NEGATIVE + FILLER))
    # transformers 5 builds a fast tokenizer from ``vocab=``; a ``vocab_file=`` alone is ignored (all [UNK]).
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer.tokenize("Good film") == ["good", "film"]
    tokenizer.save_pretrained(folder)
    config = models.tiny_config("bert", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    module, params = models.from_config(config, task="base", seed=0)
    models.save_pretrained(module, params, str(folder))
    return folder


def load_config(method: str, arg: str | None = None):
    """configs/glue.py's config for ``method`` (``arg``: its other options, e.g. ``"offline"``)."""
    from configs import glue

    return glue.get_config(glue.with_method(method, arg))


def tiny(config, model_dir, glue_dir, tmp_path, **overrides):
    """``config`` pointed at the tiny model and data, sized for a few fast steps."""
    config.model = str(model_dir)
    config.data_dir = str(glue_dir)
    config.cache_dir = str(tmp_path / "cache")
    config.max_length = 16
    config.min_bucket = 16
    config.batch_size = 8
    config.eval_batch_size = 8
    config.max_steps = 2
    config.eval_every = 2
    config.log_every = 1
    config.progress_bar = False
    config.plot = False
    config.max_eval_examples = -1
    config.optimizer.learning_rate = 1e-2
    config.model_dropout = 0.0  # dropout doubles the compile time; the resume and sharding tests turn it on
    config.update_from_flattened_dict(overrides)  # "optimizer.learning_rate"-style keys
    return config


@pytest.fixture
def tiny_factory(tiny_model, tiny_glue, tmp_path):
    def make(method: str = "lora", **overrides):
        return tiny(load_config(method), tiny_model, tiny_glue, tmp_path, **overrides)

    return make
