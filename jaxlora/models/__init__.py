"""Flax Linen models (BERT, RoBERTa, Llama) that load and save Hugging Face checkpoints.

transformers 5 has no Flax classes, so jaxlora owns its models. They match the
PyTorch ones to float32 rounding, use :class:`jaxlora.nn.Dense` for every linear
layer (so factored adapters run inside), name parameters after the HF modules
(``bert/encoder/layer_0/attention/query/kernel``), and tag every parameter with
logical axis names for sharding.

One concept per module:

* :mod:`~jaxlora.models.family`: the :class:`ModelFamily` record (HF model types and
  class stems, parameter prefix, tasks, build function, input names, naming rules,
  PEFT task types) and its registry, :func:`register_family` / :func:`get_family`.
* :mod:`~jaxlora.models.bert`, :mod:`~jaxlora.models.llama`: the modules of each family,
  and the records they register (``"bert"``, ``"roberta"``; ``"llama"``, which also reads
  Qwen2); :mod:`~jaxlora.models.layers`: the blocks they share; :mod:`~jaxlora.models.rope`:
  rotary position embeddings; :mod:`~jaxlora.models.kv_cache`: the decoder's KV cache.
* :mod:`~jaxlora.models.stack`: the layer stack, unrolled or one ``nn.scan``
  (``scan_layers=True``), with its remat policy; :func:`layer_stacks`,
  :func:`stack_params` / :func:`unstack_params`.
* :mod:`~jaxlora.models.hub`: presets, local folders and the Hub (:func:`resolve`).
* :mod:`~jaxlora.models.tokenizer`: :func:`load_tokenizer`, without PyTorch where it can.
* :mod:`~jaxlora.models.hf_config`: ``config.json`` read without transformers.
* :mod:`~jaxlora.models.hf_io`: HF parameter names and checkpoint files.
* :mod:`~jaxlora.models.build`: modules and fresh parameters from a config (:func:`from_config`).
* :mod:`~jaxlora.models.pretrained`: :func:`from_pretrained` / :func:`save_pretrained`.
* :mod:`~jaxlora.models.testing`: tiny configs and PyTorch references for parity tests.
* :mod:`~jaxlora.models.gguf`: llama.cpp's GGUF files (``from_pretrained("smollm2-135m")``), read
  without PyTorch; :mod:`~jaxlora.models.generation`: :func:`generate` (KV cache, greedy or sampled).

>>> import jax.numpy as jnp
>>> import jaxlora
>>> module, params = jaxlora.models.from_config(jaxlora.models.tiny_config("bert"), num_labels=2)
>>> ids = jnp.array([[101, 2204, 2143, 102]])
>>> jaxlora.models.get_family(module).input_names
('input_ids', 'attention_mask', 'token_type_ids')
>>> module.apply({"params": params}, ids, jnp.ones_like(ids)).shape
(1, 2)

With a real checkpoint (``tokenizer`` and weights from the ``minilm-l6`` preset):

>>> tokenizer = jaxlora.models.load_tokenizer("minilm-l6")
>>> batch = tokenizer(["a good film"], padding="max_length", max_length=8, return_tensors="np")
>>> module, params = jaxlora.models.from_pretrained("minilm-l6", task="base")
>>> module.apply({"params": params}, batch["input_ids"], batch["attention_mask"]).last_hidden_state.shape
(1, 8, 384)
"""

from jaxlora.models import bert, llama  # noqa: F401  (they register the built-in families)
from jaxlora.models.build import abstract_params, build_module, from_config, init_params, logical_axes
from jaxlora.models.family import HFType, InsertedLevel, ModelFamily, families, family_of, get_family, register_family
from jaxlora.models.hf_io import (
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
from jaxlora.models.hub import presets, register_preset, resolve
from jaxlora.models.kv_cache import KVCache, init_cache
from jaxlora.models.rope import position_ids_from_mask
from jaxlora.models.pretrained import CheckpointWarning, from_pretrained, save_pretrained
from jaxlora.models.stack import REMAT_POLICIES, layer_stacks, stack_params, unstack_params
from jaxlora.models.testing import tiny_config
from jaxlora.models.tokenizer import load_tokenizer
from jaxlora.util.trees import flatten, unflatten

__all__ = [
    "BACKBONE_PREFIX",
    "FAMILIES",
    "CheckpointWarning",
    "HFType",
    "InsertedLevel",
    "KVCache",
    "REMAT_POLICIES",
    "MatchReport",
    "ModelFamily",
    "abstract_params",
    "build_module",
    "families",
    "family_of",
    "flatten",
    "from_config",
    "from_pretrained",
    "generate",
    "get_family",
    "hf_module_name",
    "hf_param_name",
    "init_cache",
    "init_params",
    "layer_stacks",
    "load_tokenizer",
    "logical_axes",
    "match_state_dict",
    "module_path_from_hf",
    "params_from_hf",
    "params_to_hf",
    "position_ids_from_mask",
    "presets",
    "read_state_dict",
    "register_family",
    "register_preset",
    "resolve",
    "save_pretrained",
    "stack_params",
    "tiny_config",
    "unflatten",
    "unstack_params",
    "write_safetensors",
]


def __getattr__(name: str):
    # FAMILIES (names) and BACKBONE_PREFIX (name -> prefix) read the registry on each access,
    # so families registered after import are in them.
    if name in ("FAMILIES", "BACKBONE_PREFIX"):
        return getattr(hf_io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
