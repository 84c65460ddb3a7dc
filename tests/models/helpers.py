"""Shared helpers for the model tests: padded batches and HF reference models on disk."""

from __future__ import annotations

import numpy as np


def padded_batch(vocab: int, pad: int, lengths=(9, 6, 2), length: int = 9, left: bool = False, seed: int = 0):
    """Random ids ``(len(lengths), length)`` with padding (right, or left) and the matching mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(len(lengths), length))
    mask = np.zeros((len(lengths), length), np.int64)
    for row, n in enumerate(lengths):
        if left:
            mask[row, length - n :] = 1
        else:
            mask[row, :n] = 1
    return np.where(mask == 1, ids, pad), mask


def save_torch_reference(hf_class, config, folder, seed: int = 0):
    """A randomly initialised transformers model, saved to ``folder``; returns it in eval mode."""
    import torch

    torch.manual_seed(seed)
    model = hf_class(config).eval()
    model.save_pretrained(folder)
    return model


def torch_logits(model, ids, mask, **kwargs) -> np.ndarray:
    import torch

    tensors = {k: torch.from_numpy(np.array(v)) for k, v in kwargs.items()}
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **tensors)
    return out.logits.numpy()
