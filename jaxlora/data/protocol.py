"""The CondLoRA protocol's splits: 90% of GLUE train to train, 10% to select, GLUE dev to report.

METHODS.md section 3: GLUE train is shuffled with seed 1; its first 10% rows are the validation
split (checkpoint selection), the rest trains; GLUE dev is the test split (GLUE test has no
labels). :func:`protocol_splits` builds exactly those three, with the permutation the official
code gets from ``datasets.Dataset.shuffle(seed=1)``.

>>> split = Split([f"s{i}" for i in range(10)], None, np.zeros(10, np.int32), np.arange(10))
>>> train, validation = split_train_validation(split, 0.2, seed=1)
>>> train.num_examples, validation.num_examples
(8, 2)
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from jaxlora.data.glue import GlueTask
from jaxlora.data.readers import Split, take
from jaxlora.data.sources import load_split

__all__ = ["GlueSplits", "split_train_validation", "protocol_splits"]


class GlueSplits(NamedTuple):
    """The three splits of the protocol: ``test`` is GLUE dev (GLUE test has no labels)."""

    train: Split
    validation: Split
    test: Split


def split_train_validation(split: Split, validation_fraction: float = 0.1, seed: int = 1) -> tuple[Split, Split]:
    """Shuffle ``split`` with ``seed`` and cut off the first ``round(n * fraction)`` rows as validation.

    This reproduces the official CondLoRA code, ``ds.shuffle(seed=1)`` then ``select``: the
    permutation is ``numpy.random.default_rng(seed).permutation(n)``, as in `datasets`.

    >>> split = Split([str(i) for i in range(5)], None, np.zeros(5, np.int32), np.arange(5))
    >>> train, validation = split_train_validation(split, 0.4, seed=1)
    >>> validation.idx.tolist() == np.random.default_rng(1).permutation(5)[:2].tolist()
    True
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
    n = split.num_examples
    num_validation = round(n * validation_fraction)
    if num_validation == 0 or num_validation == n:
        raise ValueError(
            f"A validation fraction of {validation_fraction} of {n} examples leaves an empty split."
        )
    order = np.random.default_rng(seed).permutation(n)
    return take(split, order[num_validation:]), take(split, order[:num_validation])


def protocol_splits(
    task: str | GlueTask,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    validation_fraction: float = 0.1,
    seed: int = 1,
) -> GlueSplits:
    """Train / validation / test splits of the CondLoRA protocol (METHODS.md section 3).

    On the real SST-2 files, ``protocol_splits("sst2", data_dir=glue_dir)`` gives 60,614 / 6,735 / 872
    examples (``tests/data/test_glue_readers.py`` checks it); the package docstring runs it on a tiny folder.
    """
    full_train = load_split(task, "train", data_dir, source)
    train, validation = split_train_validation(full_train, validation_fraction, seed)
    return GlueSplits(train, validation, load_split(task, "dev", data_dir, source))
