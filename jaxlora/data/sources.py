"""Where GLUE splits come from: a local folder in the $GLUE_DIR layout, or the Hugging Face hub.

A local folder holds one folder per task, named like GLUE's download (``SST-2``) or the hub config
(``sst2``), with ``<split>.<ext>`` files (``dev`` may also be ``validation``; MNLI uses
``dev_matched``). The hub path reads ``nyu-mll/glue`` with `datasets`, and fails fast with a
pointer to local files when the machine is offline.
"""

from __future__ import annotations

import os

from jaxlora import errors
from jaxlora.data.glue import HUB_PATH, SPLIT_NAMES, GlueTask, normalise_name, get_task
from jaxlora.data.readers import FILE_EXTENSIONS, HOW_TO_POINT, Split, Table, read_file, split_from_table
from jaxlora.util import hub_offline_reason

__all__ = ["find_split_file", "read_split", "load_hub_split", "load_split"]


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    if data_dir is None:
        data_dir = os.environ.get("GLUE_DIR")
        if not data_dir:
            raise FileNotFoundError(
                "No GLUE data directory: GLUE_DIR is not set and no data_dir was given. " + HOW_TO_POINT
            )
        origin = "GLUE_DIR"
    else:
        origin = "data_dir"
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"GLUE data directory {data_dir!r} (from {origin}) does not exist. " + HOW_TO_POINT
        )
    return data_dir


def _find_task_dir(task: GlueTask, data_dir: str) -> str:
    wanted = {normalise_name(n) for n in task.folder_names}
    for entry in sorted(os.listdir(data_dir)):
        if normalise_name(entry) in wanted and os.path.isdir(os.path.join(data_dir, entry)):
            return os.path.join(data_dir, entry)
    # data_dir may already be the task folder itself.
    if any(_split_candidates(task, data_dir, "train") + _split_candidates(task, data_dir, "dev")):
        return data_dir
    raise FileNotFoundError(
        f"No folder for GLUE task {task.display_name} in {data_dir!r} "
        f"(looked for {' or '.join(task.folder_names)}). " + HOW_TO_POINT
    )


def _split_candidates(task: GlueTask, task_dir: str, split: str) -> list[str]:
    return [
        os.path.join(task_dir, f"{stem}.{ext}")
        for stem in task.file_stems[split]
        for ext in FILE_EXTENSIONS
        if os.path.isfile(os.path.join(task_dir, f"{stem}.{ext}"))
    ]


def find_split_file(task: str | GlueTask, split: str, data_dir: str | os.PathLike | None = None) -> str:
    """The path of ``split`` ("train", "dev" or "test") of ``task`` under ``data_dir`` (or $GLUE_DIR).

    >>> import pathlib, tempfile
    >>> glue_dir = pathlib.Path(tempfile.mkdtemp())
    >>> (glue_dir / "sst2").mkdir()   # the hub's folder name works too
    >>> _ = (glue_dir / "sst2" / "validation.csv").write_text("sentence,label\\nfine,1\\n")
    >>> pathlib.Path(find_split_file("SST-2", "dev", glue_dir)).relative_to(glue_dir).as_posix()
    'sst2/validation.csv'
    """
    task = get_task(task)
    if split not in SPLIT_NAMES:
        raise ValueError(f"Unknown split {split!r}: use one of {', '.join(SPLIT_NAMES)}.")
    task_dir = _find_task_dir(task, _resolve_data_dir(data_dir))
    found = _split_candidates(task, task_dir, split)
    if not found:
        looked = ", ".join(f"{s}.{{{','.join(FILE_EXTENSIONS)}}}" for s in task.file_stems[split])
        raise FileNotFoundError(
            f"No {split} file for GLUE task {task.display_name} in {task_dir!r} (looked for {looked}). "
            + HOW_TO_POINT
        )
    return found[0]



def read_split(task: str | GlueTask, split: str, data_dir: str | os.PathLike | None = None) -> Split:
    """Read ``split`` ("train", "dev" or "test") of ``task`` from ``data_dir`` (default: $GLUE_DIR).

    The task folder may be named like GLUE's download (``SST-2``) or the hub config (``sst2``);
    the file is ``<split>.<ext>`` (``dev`` may also be ``validation``; MNLI uses ``dev_matched``).

    >>> import pathlib, tempfile
    >>> glue_dir = pathlib.Path(tempfile.mkdtemp())
    >>> (glue_dir / "SST-2").mkdir()
    >>> _ = (glue_dir / "SST-2" / "train.tsv").write_text("sentence\\tlabel\\nfine \\t1\\ndull \\t0\\n")
    >>> read_split("SST-2", "train", data_dir=glue_dir).texts_a
    ['fine', 'dull']
    """
    return read_file(task, find_split_file(task, split, data_dir), split=split)



def load_hub_split(task: str | GlueTask, split: str) -> Split:
    """Download (or read from the `datasets` cache) ``split`` of ``task`` from ``nyu-mll/glue``.

    Fails fast, before touching `datasets`, when the machine is offline.

    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):   # doctest: +ELLIPSIS
    ...     load_hub_split("sst2", "dev")
    Traceback (most recent call last):
    jaxlora.errors.HubUnreachableError: Cannot load GLUE task SST-2 from the Hugging Face hub: HF_HUB_OFFLINE=1 is set. Use local files...
    """
    task = get_task(task)
    if split not in SPLIT_NAMES:
        raise ValueError(f"Unknown split {split!r}: use one of {', '.join(SPLIT_NAMES)}.")
    reason = hub_offline_reason()
    if reason is not None:
        raise errors.HubUnreachableError(
            f"Cannot load GLUE task {task.display_name} from the Hugging Face hub: {reason}.",
            "Use local files instead: " + HOW_TO_POINT,
        )
    import datasets  # heavy import, only on this path

    hub_split = task.hub_splits[split]
    dataset = datasets.load_dataset(HUB_PATH, task.hub_config, split=hub_split)
    columns = dataset.to_dict()
    n = dataset.num_rows
    table = Table(f"{HUB_PATH}/{task.hub_config}[{hub_split}]", columns, list(range(1, n + 1)), "row")
    return split_from_table(task, table, split)


def load_split(
    task: str | GlueTask,
    split: str,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
) -> Split:
    """Load ``split`` of ``task`` from local files or the hub.

    ``source="local"`` reads ``data_dir`` or $GLUE_DIR; ``"hub"`` uses ``datasets``; ``"auto"`` reads
    local files when a directory is given (argument or $GLUE_DIR) and the hub otherwise.

    >>> import pathlib, tempfile
    >>> glue_dir = pathlib.Path(tempfile.mkdtemp())
    >>> (glue_dir / "RTE").mkdir()
    >>> _ = (glue_dir / "RTE" / "dev.tsv").write_text("index\\tsentence1\\tsentence2\\tlabel\\n0\\tA\\tB\\tentailment\\n")
    >>> load_split("rte", "dev", data_dir=glue_dir, source="local").labels.tolist()
    [0]
    """
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be 'auto', 'local' or 'hub', got {source!r}.")
    local = source == "local" or (source == "auto" and (data_dir is not None or os.environ.get("GLUE_DIR")))
    if local:
        return read_split(task, split, data_dir)
    return load_hub_split(task, split)


