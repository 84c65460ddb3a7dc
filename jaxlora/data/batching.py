"""From tokenized examples to fixed-shape numpy batches: buckets, dummy rows, resumable order.

Two ideas keep the training step fast and exactly resumable:

1. **A handful of shapes.** Every batch has ``batch_size`` rows (a final partial batch is padded
   with dummy rows and flagged by ``example_mask``) and a sequence length rounded *up* to one of a few
   bucket lengths (16, 32, 64, ... up to ``max_length``), so ``jax.jit`` compiles one program per
   bucket, not one per batch, while short batches still cost little.
2. **Position as data.** The order of epoch ``e`` is a pure function of ``(seed, e)``, so the loader's
   whole state is the tiny :class:`LoaderState` ``(epoch, step, seed)``; checkpoint it next to the
   model and :func:`iterate` resumes with exactly the batches an uninterrupted run would have seen.

The batch schema is :data:`BATCH_KEYS` (see :func:`make_batch`); :data:`DEVICE_KEYS` are the ones
a training step reads.

>>> from jaxlora.data.tokenized import TokenizedDataset
>>> data = TokenizedDataset(token_ids=np.arange(1, 11, dtype=np.int32), type_ids=np.zeros(10, np.int8),
...                         offsets=np.array([0, 2, 5, 10]), labels=np.array([0, 1, 0], np.int32),
...                         idx=np.arange(3), pad_id=0, max_length=32)
>>> batch, state = next(iterate(data, LoaderState(seed=0), batch_size=2))
>>> batch["input_ids"].shape, state   # save `state` with the checkpoint of this step
((2, 16), LoaderState(epoch=0, step=1, seed=0))
"""

from __future__ import annotations

import itertools  # noqa: F401  (used by the examples)
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from jaxlora.data.tokenized import TokenizedDataset

__all__ = [
    "LoaderState",
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

# The batch schema of make_batch. Every key but idx goes to the devices (idx may not fit int32).
DEVICE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "example_mask")
BATCH_KEYS = DEVICE_KEYS + ("idx",)


class LoaderState(NamedTuple):
    """Where a training iterator stands: ``step`` batches of ``epoch`` are done; order from ``seed``.

    Save it with the checkpoint (``np.asarray(state)`` is an int64 vector of three) and rebuild it with
    ``LoaderState.from_array(array)``.

    >>> state = LoaderState(epoch=2, step=5, seed=42)
    >>> LoaderState.from_array(np.asarray(state)) == state
    True
    """

    epoch: int = 0
    step: int = 0
    seed: int = 0

    @classmethod
    def from_array(cls, array: Any) -> "LoaderState":
        epoch, step, seed = (int(v) for v in np.asarray(array).reshape(3))
        return cls(epoch, step, seed)


# --------------------------------------------------------------------------------------------
# Shapes and batches
# --------------------------------------------------------------------------------------------


def bucket_lengths(max_length: int, min_length: int = 16) -> tuple[int, ...]:
    """Padded sequence lengths: powers of two from ``min_length``, capped by ``max_length``.

    >>> bucket_lengths(512)
    (16, 32, 64, 128, 256, 512)
    >>> bucket_lengths(100)
    (16, 32, 64, 100)
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

    >>> padded_length(40, (16, 32, 64, 128))
    64
    """
    for length in buckets:
        if longest <= length:
            return int(length)
    raise ValueError(
        f"A sequence of {longest} tokens does not fit the largest bucket {max(buckets)}: "
        "tokenize with a max_length no larger than the largest bucket."
    )


def make_batch(
    data: TokenizedDataset, indices: Sequence[int] | np.ndarray, batch_size: int, buckets: Sequence[int],
    rows: Sequence[int] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Pad the examples at ``indices`` into one batch of ``batch_size`` rows and a bucket length.

    Rows past ``len(indices)`` are dummies: ``example_mask`` 0, ``labels`` 0, ``idx`` -1, and one
    attended pad token (so attention never normalises over an all-masked row).

    ``rows`` (positions in the batch) builds only those rows, as one process of a multi-process
    run does with its own share (:func:`jaxlora.training.sharding.process_rows`): the length is
    still the whole batch's bucket, so every process builds the same shape, and the batch also
    carries ``global_examples``, the real examples of the whole batch.

    >>> from jaxlora.data.tokenized import TokenizedDataset
    >>> data = TokenizedDataset(np.arange(1, 10, dtype=np.int32), np.zeros(9, np.int8), np.array([0, 2, 5, 9]),
    ...                         np.array([1, 0, 1], np.int32), np.arange(3), pad_id=0, max_length=32)
    >>> share = make_batch(data, [0, 1, 2], batch_size=4, buckets=(4, 8), rows=[2, 3])
    >>> share["input_ids"].tolist(), share["example_mask"].tolist(), int(share["global_examples"])
    ([[6, 7, 8, 9], [0, 0, 0, 0]], [1.0, 0.0], 3)

    Keys: ``input_ids``, ``attention_mask``, ``token_type_ids`` (int32, ``(batch, length)``),
    ``labels`` (int32 or float32, ``(batch,)``), ``example_mask`` (float32, ``(batch,)``: weight each
    example's loss and metric by it), ``idx`` (int64, ``(batch,)``).

    >>> from jaxlora.data.tokenized import TokenizedDataset
    >>> data = TokenizedDataset(np.arange(1, 10, dtype=np.int32), np.zeros(9, np.int8), np.array([0, 2, 5, 9]),
    ...                         np.array([1, 0, 1], np.int32), np.arange(3), pad_id=0, max_length=32)
    >>> batch = make_batch(data, [0, 1, 2], batch_size=4, buckets=(4, 8))
    >>> batch["input_ids"].tolist()   # the fourth row is a dummy: one attended pad token
    [[1, 2, 0, 0], [3, 4, 5, 0], [6, 7, 8, 9], [0, 0, 0, 0]]
    >>> batch["attention_mask"][3].tolist(), batch["example_mask"].tolist(), batch["idx"].tolist()
    ([1, 0, 0, 0], [1.0, 1.0, 1.0, 0.0], [0, 1, 2, -1])
    """
    indices = np.asarray(indices, dtype=np.int64)
    real = len(indices)
    if real == 0 or real > batch_size:
        raise ValueError(f"A batch needs between 1 and batch_size={batch_size} examples, got {real}.")
    # The whole batch's longest example picks the bucket (only lengths are read for that).
    longest = int(data.lengths[indices].max())
    length = padded_length(max(longest, 1) if real < batch_size else longest, buckets)  # a dummy row holds 1
    built = np.arange(batch_size) if rows is None else np.asarray(rows, dtype=np.int64)
    if built.size and (built.min() < 0 or built.max() >= batch_size):
        raise ValueError(f"rows must be positions in a batch of {batch_size}, got {built.tolist()}.")
    is_real = built < real
    examples = indices[built[is_real]]
    lengths = np.ones(len(built), np.int64)
    lengths[is_real] = data.lengths[examples]
    starts = np.zeros(len(built), np.int64)
    starts[is_real] = data.offsets[examples]

    positions = np.arange(length)
    valid = positions[None, :] < lengths[:, None]
    valid[~is_real] = False
    source = np.minimum(starts[:, None] + positions[None, :], max(len(data.token_ids) - 1, 0))
    input_ids = np.where(valid, data.token_ids[source], data.pad_id).astype(np.int32)
    token_type_ids = np.where(valid, data.type_ids[source], 0).astype(np.int32)
    attention_mask = valid.astype(np.int32)
    attention_mask[~is_real, 0] = 1  # dummy rows attend to one pad token

    labels = np.zeros(len(built), data.labels.dtype)
    labels[is_real] = data.labels[examples]
    example_mask = is_real.astype(np.float32)
    idx = np.full(len(built), -1, np.int64)
    idx[is_real] = data.idx[examples]
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "labels": labels,
        "example_mask": example_mask,
        "idx": idx,
    }
    if rows is not None:
        batch["global_examples"] = np.int64(real)
    return batch


# --------------------------------------------------------------------------------------------
# Iteration
# --------------------------------------------------------------------------------------------


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Number of batches in one epoch.

    >>> steps_per_epoch(60614, 16)   # the last batch holds 14 examples and 2 dummies
    3789
    >>> steps_per_epoch(60614, 16, drop_remainder=True)
    3788
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

    >>> from jaxlora.data.tokenized import TokenizedDataset
    >>> data = TokenizedDataset(np.ones(10, np.int32), np.zeros(10, np.int8), np.arange(11), np.zeros(10, np.int32),
    ...                         np.arange(10), pad_id=0, max_length=8)
    >>> batches = epoch_order(data, batch_size=4, seed=0, epoch=3)
    >>> [len(b) for b in batches], sorted(np.concatenate(batches).tolist()) == list(range(10))
    ([4, 4, 2], True)
    >>> all((a == b).all() for a, b in zip(batches, epoch_order(data, 4, seed=0, epoch=3)))   # a pure function
    True
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
    rows: Sequence[int] | np.ndarray | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], LoaderState]]:
    """Training batches from ``state`` on, each with the state to resume *after* it.

    Runs over epochs ``state.epoch, state.epoch + 1, ...`` (forever, or until ``num_epochs`` epochs in
    total are done), reshuffled each epoch from ``(state.seed, epoch)``. Save the yielded state with the
    checkpoint of the step that consumed the batch; ``iterate(data, saved_state, ...)`` then continues
    with exactly the batches an uninterrupted run would have produced. Buckets default to
    :func:`bucket_lengths` of ``data.max_length``. ``rows``: build only those rows of each batch
    (see :func:`make_batch`); the order and the states are the same.

    >>> from jaxlora.data.tokenized import TokenizedDataset
    >>> data = TokenizedDataset(np.arange(6, dtype=np.int32), np.zeros(6, np.int8), np.arange(7),
    ...                         np.zeros(6, np.int32), np.arange(6), pad_id=0, max_length=4)
    >>> straight = [(b["idx"].tolist(), s) for b, s in itertools.islice(iterate(data, LoaderState(seed=0), 4), 3)]
    >>> straight[1][1]   # after the second batch: epoch 0 is done
    LoaderState(epoch=1, step=0, seed=0)
    >>> resumed = next(iterate(data, straight[1][1], 4))   # resume from the saved state
    >>> resumed[0]["idx"].tolist() == straight[2][0]
    True
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
            batch = make_batch(data, batches[position], batch_size, buckets, rows)
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

    >>> from jaxlora.data.tokenized import TokenizedDataset
    >>> data = TokenizedDataset(np.arange(6, dtype=np.int32), np.zeros(6, np.int8), np.array([0, 3, 4, 6]),
    ...                         np.zeros(3, np.int32), np.array([10, 11, 12]), pad_id=0, max_length=4)
    >>> [b["idx"].tolist() for b in iterate_eval(data, batch_size=2, sort_by_length=True)]   # keep idx >= 0
    [[11, 12], [10, -1]]
    """
    buckets = tuple(buckets) if buckets is not None else bucket_lengths(data.max_length)
    order = np.arange(data.num_examples)
    if sort_by_length:
        order = np.argsort(data.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield make_batch(data, order[start : start + batch_size], batch_size, buckets)


def iterate_eval_rows(
    data: TokenizedDataset, batch_size: int, *, buckets: Sequence[int] | None = None
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Shortest-first evaluation batches (less padding), each with the dataset rows it holds.

    ``rows`` puts each batch's outputs back in dataset order; it is shorter than the batch when
    the last batch is padded with dummies.

    >>> from jaxlora.data.tokenized import TokenizedDataset
    >>> data = TokenizedDataset(np.arange(6, dtype=np.int32), np.zeros(6, np.int8), np.array([0, 3, 4, 6]),
    ...                         np.zeros(3, np.int32), np.array([10, 11, 12]), pad_id=0, max_length=4)
    >>> [rows.tolist() for _, rows in iterate_eval_rows(data, batch_size=2)]
    [[1, 2], [0]]
    """
    order = np.argsort(data.lengths, kind="stable")
    batches = iterate_eval(data, batch_size, buckets=buckets, sort_by_length=True)
    for start, batch in zip(range(0, len(order), batch_size), batches):
        yield batch, order[start : start + batch_size]
