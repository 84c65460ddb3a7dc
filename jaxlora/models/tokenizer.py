"""The tokenizer of a checkpoint, loaded the way transformers' ``AutoTokenizer`` would, without PyTorch.

``AutoTokenizer`` imports transformers' config classes and so PyTorch (+185 MB,
about a second). When a folder's ``tokenizer_config.json`` declares the class
transformers registers for its model type (the family record's
:attr:`~jaxlora.models.family.HFType.tokenizer_class`, e.g. ``BertTokenizer``)
and ships no custom code, that class is loaded directly; a GGUF file's tokenizer
is built from its metadata (:func:`jaxlora.models.gguf.load_tokenizer`); any
other folder goes through ``AutoTokenizer`` and its own rules.

>>> tokenizer = load_tokenizer("minilm-l6")
>>> type(tokenizer).__name__
'BertTokenizer'
>>> tokenizer(["a good film"])["input_ids"]
[[101, 1037, 2204, 2143, 102]]
"""

from __future__ import annotations

import json
import os

from jaxlora.models import family, gguf, hf_config
from jaxlora.models.hub import resolve


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def direct_tokenizer_class(folder: str) -> str | None:
    """The tokenizer class AutoTokenizer would pick for ``folder``, when that choice is unambiguous.

    That is when ``tokenizer_config.json`` declares the class transformers registers for the
    model type (``"BertTokenizer"`` or ``"BertTokenizerFast"`` for BERT) and ships no custom code;
    anything else (``None``) is left to AutoTokenizer's own rules.

    >>> direct_tokenizer_class(resolve("minilm-l6"))
    'BertTokenizer'
    """
    hf_type = family.find_hf_type(_read_json(os.path.join(folder, hf_config.CONFIG_FILE)).get("model_type"))
    registered = hf_type.tokenizer_class if hf_type is not None else None
    tokenizer_config = _read_json(os.path.join(folder, "tokenizer_config.json"))
    declared = tokenizer_config.get("tokenizer_class")
    if registered is None or "auto_map" in tokenizer_config or not isinstance(declared, str):
        return None
    return registered if declared.removesuffix("Fast") == registered else None


def load_tokenizer(name_or_path: str, **kwargs):
    """The tokenizer transformers' ``AutoTokenizer`` gives for a preset, local folder or (reachable) Hub id.

    ``kwargs`` go to ``from_pretrained``.

    >>> tokenizer = load_tokenizer("minilm-l6")
    >>> batch = tokenizer(["a sentence"], padding="max_length", max_length=8, return_tensors="np")
    >>> batch["input_ids"].shape
    (1, 8)
    """
    folder = resolve(name_or_path)
    if gguf.gguf_file(folder):
        return gguf.load_tokenizer(folder, **kwargs)
    class_name = direct_tokenizer_class(folder)
    if class_name is not None:
        import transformers

        return getattr(transformers, class_name).from_pretrained(folder, **kwargs)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, **kwargs)
