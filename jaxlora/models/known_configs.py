"""Published model architectures as configs only: no weights, no download, for planning and abstract shapes.

Each entry is the architecture part of the model's Hugging Face ``config.json`` as published
(vocabulary, widths, depth, heads, RoPE and norm settings), read through
:class:`~jaxlora.models.hf_config.HFConfig` like any local file, so a module built from it has the
checkpoint's exact parameter shapes. ``jaxlora.plan`` compiles training steps on such modules with
abstract parameters (:func:`jaxlora.models.abstract_params`); nothing here can be loaded as weights.

>>> config = known_config("llama3-8b")
>>> config.hidden_size, config.num_hidden_layers, config.num_key_value_heads
(4096, 32, 8)
>>> known_config("llama3-8b", num_hidden_layers=2).num_hidden_layers   # a 2-layer slice of the same width
2
"""

from __future__ import annotations

from typing import Any

from jaxlora.models.hf_config import HFConfig

__all__ = ["KNOWN_CONFIGS", "known_config", "known_names"]

_LLAMA3 = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "attention_bias": False, "hidden_act": "silu",
    "initializer_range": 0.02, "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": 128001,
    "num_key_value_heads": 8, "torch_dtype": "bfloat16",
}

_ROBERTA = {
    "model_type": "roberta", "architectures": ["RobertaForMaskedLM"], "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "initializer_range": 0.02, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 514, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "type_vocab_size": 1,
    "vocab_size": 50265,
}

# name -> (Hugging Face repo it describes, the architecture fields of its config.json)
KNOWN_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama3-8b": ("meta-llama/Meta-Llama-3-8B", {
        **_LLAMA3, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32,
    }),
    "llama3-70b": ("meta-llama/Meta-Llama-3-70B", {
        **_LLAMA3, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64,
    }),
    "qwen2-7b": ("Qwen/Qwen2-7B", {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 3584,
        "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 131072,
        "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "vocab_size": 152064, "bos_token_id": 151643,
        "eos_token_id": 151643, "use_sliding_window": False, "torch_dtype": "bfloat16",
    }),
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": 576,
        "intermediate_size": 1536, "max_position_embeddings": 8192,
        "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "rms_norm_eps": 1e-05,
        "rope_theta": 100000.0, "tie_word_embeddings": True, "vocab_size": 49152,
    }),
    "roberta-base": ("FacebookAI/roberta-base", {
        **_ROBERTA, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
    }),
    "roberta-large": ("FacebookAI/roberta-large", {
        **_ROBERTA, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
    }),
}


def known_names() -> list[str]:
    """The names :func:`known_config` takes.

    >>> known_names()
    ['llama3-70b', 'llama3-8b', 'qwen2-7b', 'roberta-base', 'roberta-large', 'smollm2-135m']
    """
    return sorted(KNOWN_CONFIGS)


def known_config(name: str, **overrides: Any) -> HFConfig:
    """The :class:`HFConfig` of a known architecture; ``overrides`` replace fields (``num_hidden_layers=2``).

    >>> known_config("qwen2-7b").model_type, known_config("roberta-large").num_labels
    ('qwen2', 2)
    >>> known_config("gpt-5")
    Traceback (most recent call last):
    ...
    KeyError: "No known config 'gpt-5'; known: ['llama3-70b', 'llama3-8b', 'qwen2-7b', 'roberta-base', 'roberta-large', 'smollm2-135m']."
    """
    if name not in KNOWN_CONFIGS:
        raise KeyError(f"No known config {name!r}; known: {known_names()}.")
    repo, fields = KNOWN_CONFIGS[name]
    return HFConfig.from_dict({**fields, **overrides}, name_or_path=repo)
