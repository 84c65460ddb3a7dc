"""Tiny random BERT, RoBERTa and Llama models shared by the interop tests.

Each family's base weights are saved once per session as a Hugging Face folder,
so PyTorch (transformers + PEFT) and jaxlora run on the very same numbers.
"""

import warnings
from typing import NamedTuple

import numpy as np
import pytest
import torch
import transformers

import jaxlora.models as models


class TinyModel(NamedTuple):
    family: str
    module: object
    frozen: dict
    base_dir: str
    ids: np.ndarray
    mask: np.ndarray
    targets: tuple  # a typical LoRA target list for the family
    square_targets: tuple  # square kernels (CondLoRA)
    head: tuple  # the head trained in full

    @property
    def causal(self) -> bool:
        return self.module.spec.task == "causal_lm"

    def torch_base(self):
        cls = transformers.AutoModelForCausalLM if self.causal else transformers.AutoModelForSequenceClassification
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.from_pretrained(self.base_dir).eval()

    def jax_logits(self, params) -> np.ndarray:
        return self.valid(np.asarray(self.module.apply({"params": params}, self.ids, self.mask)))

    def torch_logits(self, model) -> np.ndarray:
        with torch.no_grad():
            out = model(input_ids=torch.tensor(self.ids), attention_mask=torch.tensor(self.mask)).logits
        return self.valid(out.numpy())

    def valid(self, logits: np.ndarray) -> np.ndarray:
        # Causal LM logits at padded positions are meaningless (and differ between libraries).
        return logits[self.mask.astype(bool)] if self.causal else logits


_SETUP = {
    "bert": ("sequence_classification", ("query", "value"), ("query", "value"), ("classifier",)),
    "roberta": ("sequence_classification", ("query", "value"), ("query", "value"), ("classifier",)),
    "llama": ("causal_lm", ("q_proj", "v_proj"), ("q_proj", "o_proj"), ("lm_head",)),
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, TinyModel]:
    out = {}
    rng = np.random.default_rng(0)
    for family, (task, targets, square, head) in _SETUP.items():
        module, frozen = models.from_config(
            models.tiny_config(family), task=task, num_labels=None if task == "causal_lm" else 3, seed=1
        )
        base_dir = str(tmp_path_factory.mktemp(f"{family}_base"))
        models.save_pretrained(module, frozen, base_dir)
        ids = rng.integers(3, 99, size=(2, 7))
        mask = np.ones_like(ids)
        mask[1, 5:] = 0
        out[family] = TinyModel(family, module, frozen, base_dir, ids, mask, targets, square, head)
    return out
