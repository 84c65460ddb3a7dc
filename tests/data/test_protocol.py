"""The CondLoRA protocol's 90/10 split: deterministic, disjoint, complete, equal to datasets' shuffle."""

import os

import numpy as np
import pytest

from jaxlora import data as jdata
from tests.data.glue_files import GLUE_DIR, needs_glue


@needs_glue
def test_protocol_split_is_deterministic_disjoint_and_complete():
    full = jdata.read_split("sst2", "train", GLUE_DIR)
    train, validation = jdata.split_train_validation(full, 0.1, seed=1)
    assert (train.num_examples, validation.num_examples) == (60614, 6735)
    ids_train, ids_val = set(train.idx.tolist()), set(validation.idx.tolist())
    assert not ids_train & ids_val
    assert ids_train | ids_val == set(full.idx.tolist())
    again_train, again_val = jdata.split_train_validation(full, 0.1, seed=1)
    np.testing.assert_array_equal(again_val.idx, validation.idx)
    assert again_train.texts_a == train.texts_a
    other = jdata.split_train_validation(full, 0.1, seed=2)[1]
    assert not np.array_equal(other.idx, validation.idx)
    # Rows travel with their labels.
    row = int(validation.idx[0])
    assert validation.texts_a[0] == full.texts_a[row] and validation.labels[0] == full.labels[row]


@needs_glue
def test_protocol_split_matches_the_official_datasets_shuffle():
    import datasets

    splits = jdata.protocol_splits("rte", data_dir=GLUE_DIR)
    n = 2490
    shuffled = datasets.Dataset.from_dict({"row": np.arange(n)}).shuffle(seed=1)["row"]
    num_validation = round(n * 0.1)
    np.testing.assert_array_equal(splits.validation.idx, shuffled[:num_validation])
    np.testing.assert_array_equal(splits.train.idx, shuffled[num_validation:])
    assert splits.test.num_examples == 277  # GLUE dev is the test set


def test_take_and_split_argument_errors():
    split = jdata.Split(["a", "b", "c"], None, np.array([0, 1, 0], np.int32), np.arange(3))
    sub = jdata.take(split, [2, 0])
    assert sub.texts_a == ["c", "a"] and sub.labels.tolist() == [0, 0] and sub.idx.tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"validation_fraction must be in \(0, 1\)"):
        jdata.split_train_validation(split, 1.5)
    with pytest.raises(ValueError, match="leaves an empty split"):
        jdata.split_train_validation(split, 0.1)
    with pytest.raises(ValueError, match="Unknown split 'valid'"):
        jdata.find_split_file("sst2", "valid", os.getcwd())
