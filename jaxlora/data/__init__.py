"""GLUE data for jaxlora: task registry, file/hub readers, the CondLoRA split, tokenization and batching.

Typical use (offline, from local GLUE files)::

    from jaxlora import data
    splits = data.protocol_splits("sst2", data_dir=os.environ["GLUE_DIR"])   # train / validation / test
    train = data.tokenize(splits.train, tokenizer, max_length=128, name="sst2-train")
    for batch, loader_state in data.iterate(train, data.LoaderState(seed=0), batch_size=16):
        ...
"""

from jaxlora.data.batching import (
    BATCH_KEYS,
    DEVICE_KEYS,
    LoaderState,
    TokenizedDataset,
    bucket_lengths,
    default_cache_dir,
    epoch_order,
    iterate,
    iterate_eval,
    make_batch,
    padded_length,
    select,
    steps_per_epoch,
    tokenize,
    tokenizer_fingerprint,
)
from jaxlora.data.glue import HUB_PATH, SPLIT_NAMES, TASKS, GlueTask, get_task, task_names
from jaxlora.data.protocol import GlueSplits, protocol_splits, split_train_validation
from jaxlora.data.readers import FILE_EXTENSIONS, Split, read_file, take
from jaxlora.data.sources import find_split_file, load_hub_split, load_split, read_split
