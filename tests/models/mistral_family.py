"""A Mistral family for jaxlora, in one file: the proof that a new family needs nothing else.

Mistral's modules are Llama's (same names, RMSNorm, RoPE, grouped-query SwiGLU
blocks); what differs is transformers' naming (``model_type="mistral"``,
``MistralForCausalLM``), its config class defaults, and a sliding attention
window. jaxlora's Llama attends to every earlier token, which is Mistral's
attention only when ``sliding_window`` is ``None`` (Mistral 7B v0.2 and later)
or covers every position, so other configs are refused.

Importing this module registers the family.
"""

from __future__ import annotations

import dataclasses

from jaxlora.models import llama
from jaxlora.models.family import HFType, get_family, register_family

# transformers 5's MistralConfig class defaults (a config.json written by transformers leaves them out).
CONFIG_DEFAULTS = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=None, hidden_act="silu", max_position_embeddings=4096 * 32,
    initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, pad_token_id=None, bos_token_id=1, eos_token_id=2,
    tie_word_embeddings=False, rope_parameters=None, sliding_window=4096, attention_dropout=0.0,
)


def build_module(config, family, task, dtype, param_dtype, remat=False, scan_layers=False):
    window = getattr(config, "sliding_window", None)
    if window is not None and window < config.max_position_embeddings:
        raise ValueError(
            f"sliding_window={window} is shorter than max_position_embeddings={config.max_position_embeddings}; "
            "jaxlora's Mistral attends to every earlier token. Set sliding_window=None (as Mistral 7B v0.2+ does)."
        )
    return llama.LLAMA.build(config, family, task, dtype=dtype, param_dtype=param_dtype, remat=remat,
                             scan_layers=scan_layers)


MISTRAL = register_family(dataclasses.replace(
    get_family("llama"),
    name="mistral",
    hf_types=(HFType("mistral", "Mistral", None, CONFIG_DEFAULTS),),
    build=build_module,
))
