"""GLUE data for jaxlora: the task table, file readers, sources, the CondLoRA split, tokenization, batches.

One module per step, each usable alone:

* :mod:`~jaxlora.data.glue`: the GLUE task table (:data:`TASKS`, :func:`get_task`);
* :mod:`~jaxlora.data.readers`: one GLUE file (TSV/CSV/JSONL/parquet) into a :class:`Split`;
* :mod:`~jaxlora.data.sources`: where a split comes from: a ``$GLUE_DIR`` folder or the hub;
* :mod:`~jaxlora.data.protocol`: the CondLoRA protocol's train / validation / test splits;
* :mod:`~jaxlora.data.tokenized`: tokenize once, ragged, cached (:class:`TokenizedDataset`);
* :mod:`~jaxlora.data.batching`: fixed-shape batches in length buckets, a resumable order.

What the training loop does with them is the GLUE task kind's business (:mod:`jaxlora.tasks.glue`).

>>> import pathlib, tempfile
>>> glue_dir = pathlib.Path(tempfile.mkdtemp())
>>> (glue_dir / "SST-2").mkdir()
>>> rows = "".join(f"{'a good film' if i % 2 else 'a bad plot'}\\t{i % 2}\\n" for i in range(20))
>>> for name in ("train", "dev"):
...     _ = (glue_dir / "SST-2" / f"{name}.tsv").write_text("sentence\\tlabel\\n" + rows)
>>> splits = protocol_splits("sst2", data_dir=glue_dir)      # train / validation / test
>>> splits.train.num_examples, splits.validation.num_examples, splits.test.num_examples
(18, 2, 20)
>>> from transformers import BertTokenizerFast
>>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "good", "bad", "film", "plot"]
>>> tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(words)})
>>> train = tokenize(splits.train, tokenizer, max_length=16, cache_dir=glue_dir / "cache", name="sst2-train")
>>> batch, loader_state = next(iterate(train, LoaderState(seed=0), batch_size=4))
>>> batch["input_ids"].shape, loader_state
((4, 16), LoaderState(epoch=0, step=1, seed=0))
"""

from jaxlora.data.batching import (
    BATCH_KEYS,
    DEVICE_KEYS,
    LoaderState,
    bucket_lengths,
    epoch_order,
    iterate,
    iterate_eval,
    iterate_eval_rows,
    make_batch,
    padded_length,
    steps_per_epoch,
)
from jaxlora.data.glue import HUB_PATH, SPLIT_NAMES, TASKS, GlueTask, get_task, task_names
from jaxlora.data.protocol import GlueSplits, protocol_splits, split_train_validation
from jaxlora.data.readers import FILE_EXTENSIONS, Split, read_file, take
from jaxlora.data.sources import find_split_file, load_hub_split, load_split, read_split
from jaxlora.data.tokenized import TokenizedDataset, default_cache_dir, select, tokenize, tokenizer_fingerprint
