"""Tokenize once: a whole split through a Hugging Face tokenizer, stored ragged, cached on disk.

:func:`tokenize` runs the tokenizer over a :class:`~jaxlora.data.Split` in large batched calls and
stores the result ragged (all token ids concatenated plus offsets) as a :class:`TokenizedDataset`,
cached as ``.npz`` under a key made of the tokenizer's fingerprint, ``max_length`` and a hash of the
data, so a second run (or a resumed one) loads it in milliseconds and a changed file or tokenizer
never reads a stale cache.

>>> data = TokenizedDataset(token_ids=np.array([101, 7, 102, 101, 102], np.int32), type_ids=np.zeros(5, np.int8),
...                         offsets=np.array([0, 3, 5]), labels=np.array([1, 0], np.int32), idx=np.arange(2),
...                         pad_id=0, max_length=8)
>>> data.num_examples, data.lengths.tolist()
(2, [3, 2])
>>> select(data, [1]).token_ids.tolist()
[101, 102]
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
import warnings
import weakref
import zipfile
from typing import Any, NamedTuple, Sequence

import numpy as np

from jaxlora.data.readers import Split

__all__ = ["TokenizedDataset", "tokenize", "tokenizer_fingerprint", "default_cache_dir", "select"]

_CACHE_FORMAT = 1
_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, tuple[int, str]]" = weakref.WeakKeyDictionary()
class TokenizedDataset(NamedTuple):
    """A tokenized split, stored ragged: example ``i`` is ``token_ids[offsets[i]:offsets[i+1]]``.

    The module docstring builds one by hand; :func:`tokenize` builds them from a :class:`Split`.
    """

    token_ids: np.ndarray  # int32 (total_tokens,)
    type_ids: np.ndarray  # int8 (total_tokens,): segment ids (0 for the first text, 1 for the second)
    offsets: np.ndarray  # int64 (num_examples + 1,)
    labels: np.ndarray  # int32 class ids (-1 = unlabeled) or float32 scores
    idx: np.ndarray  # int64 example ids from the file
    pad_id: int
    max_length: int

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def default_cache_dir() -> str:
    """$JAXLORA_CACHE/tokenized, or ~/.cache/jaxlora/tokenized.

    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"JAXLORA_CACHE": "/tmp/jaxlora-cache"}):
    ...     default_cache_dir()
    '/tmp/jaxlora-cache/tokenized'
    """
    root = os.environ.get("JAXLORA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxlora")
    return os.path.join(root, "tokenized")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides a tokenizer's output: vocabulary, special tokens, pipeline.

    >>> from transformers import BertTokenizerFast
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film"]
    >>> tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(words)})
    >>> before = tokenizer_fingerprint(tokenizer)
    >>> len(before), before == tokenizer_fingerprint(tokenizer)
    (16, True)
    >>> _ = tokenizer.add_tokens(["plot"])
    >>> tokenizer_fingerprint(tokenizer) == before   # another vocabulary, another cache key
    False
    """
    # Hashing the whole pipeline takes ~0.1 s; remember it per tokenizer object (and size, since
    # adding tokens changes the result).
    try:
        memo = _FINGERPRINTS.get(tokenizer)
    except TypeError:  # not weak-referenceable: just compute
        memo = None
    if memo is not None and memo[0] == len(tokenizer):
        return memo[1]
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The full pipeline (normalizer, pre-tokenizer, model, post-processor) as JSON, minus the
        # truncation/padding state that calls to the tokenizer change.
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        digest.update(json.dumps(spec, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    digest.update(json.dumps(specials, sort_keys=True).encode())
    digest.update(str(getattr(tokenizer, "truncation_side", "right")).encode())
    fingerprint = digest.hexdigest()[:16]
    try:
        _FINGERPRINTS[tokenizer] = (len(tokenizer), fingerprint)
    except TypeError:
        pass
    return fingerprint


def _data_fingerprint(split: Split) -> str:
    digest = hashlib.sha256()
    for texts in (split.texts_a, split.texts_b or []):
        digest.update(str(len(texts)).encode())
        digest.update("\x1f".join(texts).encode("utf-8", "surrogatepass"))
    digest.update(np.ascontiguousarray(split.labels).tobytes())
    digest.update(str(split.labels.dtype).encode())
    digest.update(np.ascontiguousarray(split.idx).tobytes())
    return digest.hexdigest()[:16]


def _flatten(nested: Sequence[Sequence[int]], dtype: Any) -> np.ndarray:
    total = sum(len(x) for x in nested)
    return np.fromiter(itertools.chain.from_iterable(nested), dtype=dtype, count=total)


def _tokenize_uncached(split: Split, tokenizer: Any, max_length: int, chunk_size: int) -> TokenizedDataset:
    ids_parts, type_parts, length_parts = [], [], []
    n = split.num_examples
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        args = [split.texts_a[start:stop]]
        if split.texts_b is not None:
            args.append(split.texts_b[start:stop])
        encoded = tokenizer(
            *args,
            truncation=True,  # pairs: "longest_first", as the tokenizer (and run_glue.py) does
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=True,
        )
        input_ids = encoded["input_ids"]
        type_ids = encoded.get("token_type_ids") or [[0] * len(x) for x in input_ids]
        ids_parts.append(_flatten(input_ids, np.int32))
        type_parts.append(_flatten(type_ids, np.int8))
        length_parts.append(np.fromiter((len(x) for x in input_ids), np.int64, count=len(input_ids)))
    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError(
            f"Tokenizer {type(tokenizer).__name__} has no pad token; set one first "
            "(e.g. tokenizer.pad_token = tokenizer.eos_token)."
        )
    return TokenizedDataset(
        token_ids=np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32),
        type_ids=np.concatenate(type_parts) if type_parts else np.zeros(0, np.int8),
        offsets=offsets,
        labels=np.asarray(split.labels),
        idx=np.asarray(split.idx, np.int64),
        pad_id=int(pad_id),
        max_length=int(max_length),
    )


def tokenize(
    split: Split,
    tokenizer: Any,
    max_length: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    name: str = "split",
    chunk_size: int = 8192,
) -> TokenizedDataset:
    """Tokenize ``split`` (pairs as the tokenizer joins them), truncating to ``max_length`` tokens.

    The result is cached in ``cache_dir`` (default :func:`default_cache_dir`) as
    ``<name>-<key>.npz``; the key hashes the tokenizer (:func:`tokenizer_fingerprint`), ``max_length``
    and the data itself, so a changed file or tokenizer never reads a stale cache. ``name`` (for
    example ``"sst2-train"``) only makes the file easy to recognise.

    >>> import tempfile
    >>> from transformers import BertTokenizerFast
    >>> folder = tempfile.mkdtemp()
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film"]
    >>> tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(words)})
    >>> split = Split(["good film", "film"], ["film", "good"], np.array([1, 0], np.int32), np.arange(2))
    >>> data = tokenize(split, tokenizer, max_length=8, cache_dir=folder, name="pairs")
    >>> data.token_ids[: data.offsets[1]].tolist(), data.type_ids[: data.offsets[1]].tolist()   # [CLS] a [SEP] b [SEP]
    ([2, 4, 5, 3, 5, 3], [0, 0, 0, 0, 1, 1])
    >>> tokenize(split, tokenizer, max_length=8, cache_dir=folder, name="pairs").offsets.tolist()   # from the cache
    [0, 6, 11]
    """
    if int(max_length) < 2:
        raise ValueError(f"max_length must be at least 2 (room for special tokens), got {max_length}.")
    if not use_cache:
        return _tokenize_uncached(split, tokenizer, max_length, chunk_size)
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(
        f"{_CACHE_FORMAT}|{tokenizer_fingerprint(tokenizer)}|{int(max_length)}|{_data_fingerprint(split)}".encode()
    ).hexdigest()[:20]
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = os.path.join(cache_dir, f"{safe_name}-{key}.npz")
    if os.path.isfile(path):
        try:
            return _load_npz(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            # A truncated or foreign file: rebuilt below and replaced atomically, so the next run reads it.
            warnings.warn(f"The tokenization cache {path} is unreadable ({type(err).__name__}: {err}); "
                          "rebuilding it.", stacklevel=2)
    data = _tokenize_uncached(split, tokenizer, max_length, chunk_size)
    _save_npz(path, data)
    return data


def _save_npz(path: str, data: TokenizedDataset) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Write to a temporary file and rename, so a crash never leaves a half-written cache behind.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                token_ids=data.token_ids,
                type_ids=data.type_ids,
                offsets=data.offsets,
                labels=data.labels,
                idx=data.idx,
                pad_id=np.int64(data.pad_id),
                max_length=np.int64(data.max_length),
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_npz(path: str) -> TokenizedDataset:
    with np.load(path) as z:
        return TokenizedDataset(
            token_ids=z["token_ids"],
            type_ids=z["type_ids"],
            offsets=z["offsets"],
            labels=z["labels"],
            idx=z["idx"],
            pad_id=int(z["pad_id"]),
            max_length=int(z["max_length"]),
        )


def select(data: TokenizedDataset, indices: Sequence[int] | np.ndarray) -> TokenizedDataset:
    """The examples of ``data`` at ``indices``, in that order (e.g. a subset for a quick run).

    The module docstring selects one example of two.
    """
    indices = np.asarray(indices, dtype=np.int64)
    starts = data.offsets[indices]
    lengths = data.lengths[indices]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Position t of the result comes from starts[example] + (t - new_offsets[example]).
    gather = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return data._replace(
        token_ids=data.token_ids[gather],
        type_ids=data.type_ids[gather],
        offsets=new_offsets,
        labels=data.labels[indices],
        idx=data.idx[indices],
    )
