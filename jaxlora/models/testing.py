"""Small random models and their PyTorch references, for tests of a family against transformers.

A family's parity test builds a tiny transformers config (:func:`tiny_config`),
saves a randomly initialised PyTorch model of it (:func:`save_torch_reference`),
loads that folder with :func:`jaxlora.models.from_pretrained`, and compares the
logits on a padded batch (:func:`padded_batch`, :func:`torch_logits`).
Everything here imports transformers (and torch for the references); the rest
of :mod:`jaxlora.models` does not.

>>> ids, mask = padded_batch(vocab=99, pad=0, lengths=(3, 1), length=4)
>>> mask
array([[1, 1, 1, 0],
       [1, 0, 0, 0]])
>>> ids[mask == 0].tolist()
[0, 0, 0, 0]
"""

from __future__ import annotations

import numpy as np

# Sizes every tiny model shares: 2 layers, hidden 32, 4 heads, vocab 99.
_COMMON = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, initializer_range=0.02)
_DECODER = dict(
    _COMMON, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=128,
    pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
)
# model_type -> (transformers config class name, its kwargs)
_TINY = {
    "bert": ("BertConfig", dict(_COMMON, intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0)),
    "roberta": ("RobertaConfig", dict(
        _COMMON, intermediate_size=37, max_position_embeddings=66, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )),
    "llama": ("LlamaConfig", _DECODER),
    "qwen2": ("Qwen2Config", _DECODER),
}


def tiny_config(model_type: str, **overrides):
    """A small transformers config for tests (2 layers, hidden 32, vocab 99); ``overrides`` are config kwargs.

    ``model_type`` is ``"bert"``, ``"roberta"``, ``"llama"`` or ``"qwen2"``.

    >>> config = tiny_config("llama", num_key_value_heads=1, tie_word_embeddings=True)
    >>> type(config).__name__, config.hidden_size, config.num_key_value_heads
    ('LlamaConfig', 32, 1)
    """
    import transformers

    if model_type not in _TINY:
        raise ValueError(f"tiny_config knows {sorted(_TINY)}, not {model_type!r}.")
    class_name, kwargs = _TINY[model_type]
    return getattr(transformers, class_name)(**{**kwargs, **overrides})


def padded_batch(vocab: int, pad: int, lengths=(9, 6, 2), length: int = 9, left: bool = False, seed: int = 0):
    """Random ids ``(len(lengths), length)`` with padding (right, or left) and the matching mask.

    >>> ids, mask = padded_batch(vocab=99, pad=0, lengths=(2,), length=4, left=True)
    >>> mask.tolist(), ids[0, :2].tolist()
    ([[0, 0, 1, 1]], [0, 0])
    """
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
    """A randomly initialised transformers model of ``hf_class``, saved to ``folder``; returns it in eval mode.

    >>> import tempfile, transformers
    >>> model = save_torch_reference(transformers.BertModel, tiny_config("bert"), tempfile.mkdtemp())
    >>> model.training
    False
    """
    import torch

    torch.manual_seed(seed)
    model = hf_class(config).eval()
    model.save_pretrained(folder)
    return model


def torch_logits(model, ids, mask, **kwargs) -> np.ndarray:
    """``model(input_ids=ids, attention_mask=mask, **kwargs).logits`` as numpy, without gradients.

    >>> import tempfile, transformers
    >>> config = tiny_config("bert", num_labels=3)
    >>> model = save_torch_reference(transformers.BertForSequenceClassification, config, tempfile.mkdtemp())
    >>> torch_logits(model, *padded_batch(99, 0, lengths=(4, 2), length=4)).shape
    (2, 3)
    """
    import torch

    tensors = {k: torch.from_numpy(np.array(v)) for k, v in kwargs.items()}
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **tensors)
    return out.logits.numpy()
