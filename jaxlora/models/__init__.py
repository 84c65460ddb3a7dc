"""Flax Linen models (BERT, RoBERTa, Llama) that load and save Hugging Face checkpoints.

transformers 5 has no Flax classes, so jaxlora owns its models. They match the
PyTorch ones to float32 rounding, use :class:`jaxlora.nn.Dense` for every linear
layer (so factored adapters run inside), name parameters after the HF modules
(``bert/encoder/layer_0/attention/query/kernel``), and tag every parameter with
logical axis names for sharding.

Quick start::

    module, params = jaxlora.models.from_pretrained("minilm-l6", task="sequence_classification", num_labels=2)
    tokenizer = jaxlora.models.load_tokenizer("minilm-l6")
    batch = tokenizer(["a good film"], padding="max_length", max_length=32, return_tensors="np")
    logits = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"])
    jaxlora.models.save_pretrained(module, params, "out/")   # transformers loads "out/"

Decoders load from GGUF files too (``from_pretrained("smollm2-135m")``, :mod:`jaxlora.models.gguf`)
and continue text with :func:`generate` (KV cache, greedy or sampled).
"""

from jaxlora.models.hf_io import (
    BACKBONE_PREFIX,
    FAMILIES,
    MatchReport,
    hf_module_name,
    hf_param_name,
    match_state_dict,
    module_path_from_hf,
    params_from_hf,
    params_to_hf,
    read_state_dict,
    write_safetensors,
)
from jaxlora.models.generation import generate
from jaxlora.models.llama import KVCache, init_cache, position_ids_from_mask
from jaxlora.util.trees import flatten, unflatten
from jaxlora.models.registry import (
    CheckpointWarning,
    abstract_params,
    build_module,
    family_of,
    from_config,
    from_pretrained,
    init_params,
    load_tokenizer,
    logical_axes,
    presets,
    register_preset,
    resolve,
    save_pretrained,
    tiny_config,
)

__all__ = [
    "BACKBONE_PREFIX",
    "FAMILIES",
    "CheckpointWarning",
    "KVCache",
    "MatchReport",
    "abstract_params",
    "build_module",
    "family_of",
    "flatten",
    "from_config",
    "from_pretrained",
    "generate",
    "hf_module_name",
    "hf_param_name",
    "init_cache",
    "init_params",
    "load_tokenizer",
    "logical_axes",
    "match_state_dict",
    "module_path_from_hf",
    "params_from_hf",
    "params_to_hf",
    "position_ids_from_mask",
    "presets",
    "read_state_dict",
    "register_preset",
    "resolve",
    "save_pretrained",
    "tiny_config",
    "unflatten",
    "write_safetensors",
]
