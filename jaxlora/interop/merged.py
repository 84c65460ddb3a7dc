"""The adapted model as a plain Hugging Face checkpoint.

:func:`save_merged` folds the adapter into the frozen weights
(:func:`jaxlora.merge`: ``K + s * delta`` per adapted matrix, trained leaves
such as the classifier in place) and writes ``config.json`` +
``model.safetensors`` with :func:`jaxlora.models.save_pretrained`, so
``transformers.AutoModelFor<task>.from_pretrained(folder)`` serves it with no
adapter library at all. Any variant merges; the result is as large as the base
model.

``transformers.AutoModelForSequenceClassification.from_pretrained("run/merged")``
then loads the folder :func:`save_merged` wrote (tests/interop/test_merged.py
compares its logits with jaxlora's).
"""

from __future__ import annotations

from typing import Mapping

from jaxlora.adapters.config import AdapterConfig
from jaxlora.adapters.core import Adapter, merge
from jaxlora.interop._files import atomic_folder

MERGED_FILES = {"config.json", "model.safetensors", "generation_config.json"}


def save_merged(folder: str, module, frozen: Mapping, adapter: Adapter, config: AdapterConfig) -> str:
    """Write the model with ``adapter`` merged in as a transformers checkpoint, atomically.

    The weights keep the frozen params' dtype (merging accumulates in fp32).

    >>> from jaxlora import models
    >>> module, frozen = models.from_config(models.tiny_config("bert"), num_labels=2)   # a tiny BERT
    >>> cfg = jaxlora.AdapterConfig("lora", rank=2, trainable=("classifier",))
    >>> adapter = jaxlora.init(jax.random.key(0), frozen, cfg)
    >>> save_merged("run/merged", module, frozen, adapter, cfg)
    'run/merged'
    >>> sorted(os.listdir("run/merged"))
    ['config.json', 'model.safetensors']
    """
    from jaxlora.models import save_pretrained

    merged = merge(frozen, adapter, config)
    with atomic_folder(folder, MERGED_FILES) as tmp:
        save_pretrained(module, merged, tmp)
    return folder
