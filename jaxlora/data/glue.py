"""GLUE tasks: a registry of what each task is, and readers that turn its files into columns.

A GLUE task is two things: a description (which text columns, how many labels, which metric the
papers report) and files (the original GLUE TSVs, or a Hugging Face export of ``nyu-mll/glue`` as
TSV/CSV/JSONL/parquet, or the hub itself). This module keeps the description in :data:`TASKS` and
reads any of those sources into one columnar structure, :class:`Split`::

    split = read_split("sst2", "dev", data_dir="../shared/data/glue")
    split.texts_a[0], split.labels[:4], split.num_examples

Reading rules that matter (each one was a real bug somewhere):

- GLUE's own TSVs contain bare ``"`` characters (MRPC has a field that *starts* with one and never
  closes it), so they are split on tabs with no quote processing at all (``csv.QUOTE_NONE``).
- Hugging Face exports written with ``Dataset.to_csv`` *do* quote fields CSV-style
  (``"said it found ""extensive"" damage"``), so those are un-quoted. The two are told apart by the
  header (a known original GLUE header means no quoting) and, for other headers, by checking that
  every field starting with ``"`` is a well-formed quoted field.
- MRPC's header starts with a UTF-8 BOM; SST-2 sentences end with a space. Both are stripped.
- CoLA's original train/dev files have no header at all (source, label, author mark, sentence).

The CondLoRA protocol (METHODS.md section 3) trains on 90% of GLUE train, selects checkpoints on the
other 10% (GLUE train shuffled with seed 1, first 10% rows), and reports on GLUE dev:
:func:`protocol_splits` builds exactly those three splits, with the same permutation the official
code gets from ``datasets.Dataset.shuffle(seed=1)``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

__all__ = [
    "GlueTask",
    "Split",
    "GlueSplits",
    "TASKS",
    "HUB_PATH",
    "get_task",
    "task_names",
    "read_split",
    "load_split",
    "load_hub_split",
    "hub_offline_reason",
    "split_train_validation",
    "protocol_splits",
    "take",
    "read_file",
    "find_split_file",
    "SPLIT_NAMES",
    "FILE_EXTENSIONS",
]

HUB_PATH = "nyu-mll/glue"
SPLIT_NAMES = ("train", "dev", "test")
# Tried in this order when a task folder holds several formats of the same split.
FILE_EXTENSIONS = ("tsv", "csv", "jsonl", "json", "parquet")


class GlueTask(NamedTuple):
    """Everything the data pipeline and the metrics need to know about one GLUE task.

    Column names are *candidates*, tried in order: the original GLUE TSV name first, then the
    Hugging Face ``nyu-mll/glue`` name, then generic export names (``sentence1``/``sentence2``).

    Example::

        task = get_task("STS-B")
        task.num_labels, task.is_regression, task.primary_metric   # (1, True, "pearson")
    """

    name: str  # canonical short name, the hub config: "sst2"
    display_name: str  # GLUE's own folder name: "SST-2"
    hub_config: str  # config of nyu-mll/glue
    hub_splits: Mapping[str, str]  # our split name -> hub split name
    folder_names: tuple[str, ...]  # accepted task folder names (compared case/-/_ insensitively)
    file_stems: Mapping[str, tuple[str, ...]]  # our split name -> accepted file stems
    text_a_columns: tuple[str, ...]
    text_b_columns: tuple[str, ...]  # () for single-sentence tasks
    label_columns: tuple[str, ...]
    idx_columns: tuple[str, ...]
    num_labels: int  # 1 means regression (float labels)
    label_names: tuple[str, ...]  # string labels found in original TSVs, in label-id order
    metric_names: tuple[str, ...]
    primary_metric: str  # the metric the CondLoRA paper reports for this task
    original_headers: tuple[tuple[str, ...], ...]  # headers of GLUE's own TSVs (train/dev, test)
    headerless_columns: tuple[str, ...] = ()  # column names of GLUE TSVs shipped without a header
    max_epochs: int = 0  # CondLoRA protocol's epoch cap for this task

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_pair(self) -> bool:
        return bool(self.text_b_columns)


_IDX = ("idx", "index", "id")
_STD_STEMS = {"train": ("train",), "dev": ("dev", "validation"), "test": ("test",)}
_STD_HUB = {"train": "train", "dev": "validation", "test": "test"}

_MNLI_TRAIN_HEADER = (
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label",
)
_MNLI_DEV_HEADER = _MNLI_TRAIN_HEADER[:-1] + ("label2", "label3", "label4", "label5", "gold_label")
_MNLI_TEST_HEADER = _MNLI_TRAIN_HEADER[:10]


def _mnli(name: str, dev: str, display: str) -> GlueTask:
    return GlueTask(
        name=name,
        display_name=display,
        hub_config="mnli",
        hub_splits={"train": "train", "dev": f"validation_{dev}", "test": f"test_{dev}"},
        folder_names=("MNLI", "mnli"),
        file_stems={
            "train": ("train",),
            "dev": (f"dev_{dev}", f"validation_{dev}"),
            "test": (f"test_{dev}",),
        },
        text_a_columns=("sentence1", "premise"),
        text_b_columns=("sentence2", "hypothesis"),
        label_columns=("gold_label", "label"),
        idx_columns=_IDX,
        num_labels=3,
        label_names=("entailment", "neutral", "contradiction"),
        metric_names=("accuracy",),
        primary_metric="accuracy",
        original_headers=(_MNLI_TRAIN_HEADER, _MNLI_DEV_HEADER, _MNLI_TEST_HEADER),
        max_epochs=50,
    )


TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        name="cola",
        display_name="CoLA",
        hub_config="cola",
        hub_splits=_STD_HUB,
        folder_names=("CoLA", "cola"),
        file_stems=_STD_STEMS,
        text_a_columns=("sentence",),
        text_b_columns=(),
        label_columns=("label",),
        idx_columns=_IDX,
        num_labels=2,
        label_names=("unacceptable", "acceptable"),
        metric_names=("mcc", "accuracy"),
        primary_metric="mcc",
        original_headers=(("index", "sentence"),),
        # train.tsv/dev.tsv: source code, label, the author's original "*" mark, sentence.
        headerless_columns=("source", "label", "author_label", "sentence"),
        max_epochs=100,
    ),
    "sst2": GlueTask(
        name="sst2",
        display_name="SST-2",
        hub_config="sst2",
        hub_splits=_STD_HUB,
        folder_names=("SST-2", "sst2"),
        file_stems=_STD_STEMS,
        text_a_columns=("sentence",),
        text_b_columns=(),
        label_columns=("label",),
        idx_columns=_IDX,
        num_labels=2,
        label_names=("negative", "positive"),
        metric_names=("accuracy",),
        primary_metric="accuracy",
        original_headers=(("sentence", "label"), ("index", "sentence")),
        max_epochs=60,
    ),
    "mrpc": GlueTask(
        name="mrpc",
        display_name="MRPC",
        hub_config="mrpc",
        hub_splits=_STD_HUB,
        folder_names=("MRPC", "mrpc"),
        file_stems=_STD_STEMS,
        text_a_columns=("#1 String", "sentence1"),
        text_b_columns=("#2 String", "sentence2"),
        label_columns=("Quality", "label"),
        idx_columns=_IDX,
        num_labels=2,
        label_names=("not_equivalent", "equivalent"),
        metric_names=("accuracy", "f1"),
        primary_metric="accuracy",
        original_headers=(
            ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
            ("index", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        ),
        max_epochs=100,
    ),
    "stsb": GlueTask(
        name="stsb",
        display_name="STS-B",
        hub_config="stsb",
        hub_splits=_STD_HUB,
        folder_names=("STS-B", "stsb", "sts"),
        file_stems=_STD_STEMS,
        text_a_columns=("sentence1",),
        text_b_columns=("sentence2",),
        label_columns=("score", "label"),
        idx_columns=_IDX,
        num_labels=1,
        label_names=(),
        metric_names=("pearson", "spearman"),
        primary_metric="pearson",
        original_headers=(
            ("index", "genre", "filename", "year", "old_index", "source1", "source2",
             "sentence1", "sentence2", "score"),
            ("index", "genre", "filename", "year", "old_index", "source1", "source2",
             "sentence1", "sentence2"),
        ),
        max_epochs=100,
    ),
    "rte": GlueTask(
        name="rte",
        display_name="RTE",
        hub_config="rte",
        hub_splits=_STD_HUB,
        folder_names=("RTE", "rte"),
        file_stems=_STD_STEMS,
        text_a_columns=("sentence1",),
        text_b_columns=("sentence2",),
        label_columns=("label",),
        idx_columns=_IDX,
        num_labels=2,
        label_names=("entailment", "not_entailment"),
        metric_names=("accuracy",),
        primary_metric="accuracy",
        # The Hugging Face export (sentence1, sentence2, label, idx) is *not* listed: it is quoted.
        original_headers=(("index", "sentence1", "sentence2", "label"), ("index", "sentence1", "sentence2")),
        max_epochs=100,
    ),
    "qnli": GlueTask(
        name="qnli",
        display_name="QNLI",
        hub_config="qnli",
        hub_splits=_STD_HUB,
        folder_names=("QNLI", "qnli"),
        file_stems=_STD_STEMS,
        text_a_columns=("question", "sentence1"),
        text_b_columns=("sentence", "sentence2"),
        label_columns=("label",),
        idx_columns=_IDX,
        num_labels=2,
        label_names=("entailment", "not_entailment"),
        metric_names=("accuracy",),
        primary_metric="accuracy",
        original_headers=(("index", "question", "sentence", "label"), ("index", "question", "sentence")),
        max_epochs=50,
    ),
    "qqp": GlueTask(
        name="qqp",
        display_name="QQP",
        hub_config="qqp",
        hub_splits=_STD_HUB,
        folder_names=("QQP", "qqp"),
        file_stems=_STD_STEMS,
        text_a_columns=("question1", "sentence1"),
        text_b_columns=("question2", "sentence2"),
        label_columns=("is_duplicate", "label"),
        idx_columns=_IDX,
        num_labels=2,
        label_names=("not_duplicate", "duplicate"),
        metric_names=("accuracy", "f1"),
        primary_metric="accuracy",
        original_headers=(
            ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
            ("id", "question1", "question2"),
        ),
        max_epochs=50,
    ),
    "mnli": _mnli("mnli", "matched", "MNLI"),
    # Not one of the eight paper tasks by itself (the official code reports on matched+mismatched
    # concatenated); offered so the mismatched dev set can be evaluated separately.
    "mnli_mm": _mnli("mnli_mm", "mismatched", "MNLI-mm"),
}

_ALIASES = {
    "sst": "sst2",
    "sts": "stsb",
    "mnlim": "mnli",
    "mnlimatched": "mnli",
    "mnlimm": "mnli_mm",
    "mnlimismatched": "mnli_mm",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_ ]", "", name).lower()


def task_names() -> tuple[str, ...]:
    """The canonical names of all registered tasks.

    Example::

        "sst2" in task_names()   # True
    """
    return tuple(TASKS)


def get_task(task: str | GlueTask) -> GlueTask:
    """Look a task up by any usual spelling: ``"SST-2"``, ``"sst2"``, ``"STS-B"``, ``"mnli-mm"``.

    Example::

        get_task("SST-2").name   # "sst2"
    """
    if isinstance(task, GlueTask):
        return task
    key = _normalise(str(task))
    key = _normalise(_ALIASES.get(key, key))
    for canonical, spec in TASKS.items():
        if key == _normalise(canonical) or key == _normalise(spec.display_name):
            return spec
    raise ValueError(
        f"Unknown GLUE task {task!r}. Known tasks: {', '.join(TASKS)} "
        "(spellings like 'SST-2', 'sst2', 'STS-B' are accepted)."
    )


class Split(NamedTuple):
    """One split of a task as columns. ``texts_b`` is None for single-sentence tasks.

    ``labels`` is int32 class ids (``-1`` where the file has no label, e.g. GLUE test) or, for a
    regression task, float32 scores. ``idx`` is the example id from the file (its ``idx``/``index``/
    ``id`` column) or the row number when the file has none.

    Example::

        split = Split(["good", "bad"], None, np.array([1, 0], np.int32), np.arange(2))
        split.num_examples   # 2
    """

    texts_a: list[str]
    texts_b: list[str] | None
    labels: np.ndarray
    idx: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.texts_a)

    @property
    def has_labels(self) -> bool:
        """False for an unlabeled split (every label -1 / NaN), e.g. GLUE's test files."""
        if self.labels.dtype.kind == "f":
            return bool(np.any(~np.isnan(self.labels)))
        return bool(np.any(self.labels >= 0))


def take(split: Split, indices: Sequence[int] | np.ndarray) -> Split:
    """The examples of ``split`` at ``indices``, in that order.

    Example::

        first_two = take(split, [0, 1])
    """
    indices = np.asarray(indices, dtype=np.int64)
    texts_a = [split.texts_a[i] for i in indices]
    texts_b = None if split.texts_b is None else [split.texts_b[i] for i in indices]
    return Split(texts_a, texts_b, split.labels[indices], split.idx[indices])


# --------------------------------------------------------------------------------------------
# Locating files
# --------------------------------------------------------------------------------------------

_HOW_TO_POINT = (
    "Set GLUE_DIR to the folder that holds the task folders (e.g. GLUE_DIR/SST-2/train.tsv) "
    "or pass data_dir=..."
)


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    if data_dir is None:
        data_dir = os.environ.get("GLUE_DIR")
        if not data_dir:
            raise FileNotFoundError(
                "No GLUE data directory: GLUE_DIR is not set and no data_dir was given. " + _HOW_TO_POINT
            )
        origin = "GLUE_DIR"
    else:
        origin = "data_dir"
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"GLUE data directory {data_dir!r} (from {origin}) does not exist. " + _HOW_TO_POINT
        )
    return data_dir


def _find_task_dir(task: GlueTask, data_dir: str) -> str:
    wanted = {_normalise(n) for n in task.folder_names}
    for entry in sorted(os.listdir(data_dir)):
        if _normalise(entry) in wanted and os.path.isdir(os.path.join(data_dir, entry)):
            return os.path.join(data_dir, entry)
    # data_dir may already be the task folder itself.
    if any(_split_candidates(task, data_dir, "train") + _split_candidates(task, data_dir, "dev")):
        return data_dir
    raise FileNotFoundError(
        f"No folder for GLUE task {task.display_name} in {data_dir!r} "
        f"(looked for {' or '.join(task.folder_names)}). " + _HOW_TO_POINT
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

    Example::

        find_split_file("sst2", "dev", "../shared/data/glue")   # ".../SST-2/dev.tsv"
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
            + _HOW_TO_POINT
        )
    return found[0]


# --------------------------------------------------------------------------------------------
# Reading files into columns
# --------------------------------------------------------------------------------------------


class _Table(NamedTuple):
    """Rows of a file as named columns, with the file line of each row for error messages."""

    path: str
    columns: dict[str, list[Any]]
    lines: list[int]  # 1-based line (or row) number of each row
    unit: str  # "line" or "row"


def _malformed(path: str, unit: str, line: int, what: str) -> ValueError:
    return ValueError(f"Malformed GLUE file {path}, {unit} {line}: {what}")


def _uses_csv_quoting(body: str, width: int) -> bool:
    """True when the rows parse as CSV-quoted tab-separated records and some field is quoted.

    GLUE's own files fail this (MRPC has a field that opens a quote and never closes it, so strict
    CSV parsing errors out or merges rows); ``Dataset.to_csv(sep="\\t")`` exports pass it. A file in
    which no field starts with ``"`` reads the same either way, so it is treated as unquoted.
    """
    if not any(field.startswith('"') for line in body.split("\n") for field in line.split("\t")):
        return False
    try:
        rows = list(csv.reader(io.StringIO(body), delimiter="\t", strict=True))
    except csv.Error:
        return False
    return all(len(row) == width for row in rows if row)


def _read_tsv(path: str, task: GlueTask, quoting: str) -> _Table:
    # newline="" keeps a stray "\r" inside a field instead of splitting the row there.
    with open(path, encoding="utf-8-sig", newline="") as f:
        text = f.read()
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    raw = [line[:-1] if line.endswith("\r") else line for line in raw]
    if not raw:
        raise _malformed(path, "line", 1, "the file is empty (expected a header line and rows).")

    first = raw[0].split("\t")
    originals = {tuple(h) for h in task.original_headers}
    headerless = bool(task.headerless_columns) and len(first) == len(task.headerless_columns) and (
        first[1].strip() in ("0", "1")
    )
    if headerless:
        header, body_start = list(task.headerless_columns), 0
    else:
        header, body_start = [h.strip() for h in first], 1

    if quoting == "auto":
        is_original = headerless or tuple(header) in originals
        quoting = "none"
        if not is_original and _uses_csv_quoting("\n".join(raw[body_start:]), len(header)):
            quoting = "csv"
    if quoting not in ("none", "csv"):
        raise ValueError(f"quoting must be 'auto', 'none' or 'csv', got {quoting!r}.")

    rows: list[list[str]] = []
    lines: list[int] = []
    if quoting == "none":
        for number, line in enumerate(raw[body_start:], start=body_start + 1):
            if not line.strip():
                continue
            rows.append(line.split("\t"))
            lines.append(number)
    else:
        reader = csv.reader(io.StringIO("\n".join(raw[body_start:])), delimiter="\t")
        for fields in reader:
            if not fields or not any(f.strip() for f in fields):
                continue
            rows.append(fields)
            lines.append(reader.line_num + body_start)
    return _table_from_rows(path, header, rows, lines)


def _read_csv(path: str) -> _Table:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise _malformed(path, "line", 1, "the file is empty (expected a header line and rows).") from None
        rows, lines = [], []
        for fields in reader:
            if not fields:
                continue
            rows.append(fields)
            lines.append(reader.line_num)
    return _table_from_rows(path, header, rows, lines)


def _table_from_rows(path: str, header: list[str], rows: list[list[str]], lines: list[int]) -> _Table:
    width = len(header)
    for fields, line in zip(rows, lines):
        if len(fields) != width:
            raise _malformed(
                path, "line", line,
                f"expected {width} tab-separated fields ({', '.join(header)}), found {len(fields)}. "
                "Check for a stray tab or a line break inside a sentence.",
            )
    columns = {name: [fields[i] for fields in rows] for i, name in enumerate(header)}
    return _Table(path, columns, lines, "line")


def _read_jsonl(path: str) -> _Table:
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    if text.lstrip().startswith("["):  # a JSON array of records rather than JSON lines
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise _malformed(path, "line", e.lineno, f"invalid JSON ({e.msg}).") from None
        numbered = list(enumerate(records, start=1))
        unit = "record"
    else:
        numbered, unit = [], "line"
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise _malformed(path, "line", number, f"invalid JSON ({e.msg}).") from None
    if not numbered:
        raise _malformed(path, unit, 1, "the file holds no records.")
    keys = list(numbered[0][1].keys()) if isinstance(numbered[0][1], dict) else []
    columns: dict[str, list[Any]] = {k: [] for k in keys}
    lines = []
    for number, record in numbered:
        if not isinstance(record, dict):
            raise _malformed(path, unit, number, f"expected a JSON object, found {type(record).__name__}.")
        missing = [k for k in keys if k not in record]
        if missing:
            raise _malformed(path, unit, number, f"missing field(s) {', '.join(missing)}.")
        for k in keys:
            columns[k].append(record[k])
        lines.append(number)
    return _Table(path, columns, lines, unit)


def _read_parquet(path: str) -> _Table:
    import pyarrow.parquet as pq  # pyarrow comes with `datasets`; imported only when needed

    columns = pq.read_table(path).to_pydict()
    n = len(next(iter(columns.values()))) if columns else 0
    return _Table(path, columns, list(range(1, n + 1)), "row")


def _pick(table: _Table, candidates: Sequence[str], what: str, required: bool) -> str | None:
    for name in candidates:
        if name in table.columns:
            return name
    if required:
        raise ValueError(
            f"GLUE file {table.path} has no {what} column: looked for {', '.join(map(repr, candidates))}, "
            f"found {', '.join(map(repr, table.columns))}."
        )
    return None


def _parse_label(value: Any, task: GlueTask, table: _Table, row: int) -> float | int:
    if isinstance(value, str):
        value = value.strip()
        if value in task.label_names:
            return task.label_names.index(value)
    try:
        if task.is_regression:
            return float(value)
        number = float(value)
        if number != int(number):
            raise ValueError
        label = int(number)
    except (TypeError, ValueError):
        expected = "a number" if task.is_regression else (
            f"an integer in [0, {task.num_labels}) or one of {', '.join(task.label_names)}"
        )
        raise _malformed(table.path, table.unit, table.lines[row], f"label {value!r} is not {expected}.") from None
    if not (-1 <= label < task.num_labels):
        raise _malformed(
            table.path, table.unit, table.lines[row],
            f"label {label} is out of range for {task.display_name} ({task.num_labels} classes; -1 = unlabeled).",
        )
    return label


def _split_from_table(task: GlueTask, table: _Table, split: str) -> Split:
    col_a = _pick(table, task.text_a_columns, "first-sentence", required=True)
    col_b = _pick(table, task.text_b_columns, "second-sentence", required=True) if task.is_pair else None
    col_label = _pick(table, task.label_columns, "label", required=split != "test")
    col_idx = _pick(table, task.idx_columns, "index", required=False)

    def texts(column: str) -> list[str]:
        values = table.columns[column]
        for row, v in enumerate(values):
            if not isinstance(v, str):
                raise _malformed(
                    table.path, table.unit, table.lines[row], f"column {column!r} holds {v!r}, not a string."
                )
        # Trailing spaces (SST-2) and stray whitespace carry no meaning for a tokenizer.
        return [v.strip() for v in values]

    texts_a = texts(col_a)
    texts_b = texts(col_b) if col_b else None
    n = len(texts_a)
    if col_label is None:
        labels = np.full(n, np.nan if task.is_regression else -1, np.float32 if task.is_regression else np.int32)
    else:
        parsed = [_parse_label(v, task, table, row) for row, v in enumerate(table.columns[col_label])]
        labels = np.asarray(parsed, np.float32 if task.is_regression else np.int32)
        if task.is_regression and split == "test" and n and np.all(labels == -1):
            labels = np.full(n, np.nan, np.float32)  # the hub marks unlabeled STS-B test rows with -1.0
    if col_idx is None:
        idx = np.arange(n, dtype=np.int64)
    else:
        try:
            idx = np.asarray([int(str(v).strip()) for v in table.columns[col_idx]], np.int64)
        except ValueError:
            bad = next(r for r, v in enumerate(table.columns[col_idx]) if not str(v).strip().lstrip("-").isdigit())
            raise _malformed(
                table.path, table.unit, table.lines[bad],
                f"index column {col_idx!r} holds {table.columns[col_idx][bad]!r}, not an integer.",
            ) from None
    return Split(texts_a, texts_b, labels, idx)


def read_file(task: str | GlueTask, path: str | os.PathLike, split: str = "train", quoting: str = "auto") -> Split:
    """Read one GLUE file (original TSV or a Hugging Face export) into a :class:`Split`.

    The format follows the extension: ``.tsv``/``.txt`` (tab-separated, quoting detected as the
    module docstring says; force it with ``quoting="none"`` or ``"csv"``), ``.csv``, ``.jsonl``/``.json``,
    ``.parquet``. ``split="test"`` allows a missing label column (labels become -1 / NaN).

    Example::

        dev = read_file("mrpc", "../shared/data/glue/MRPC/dev.tsv", split="dev")
    """
    task = get_task(task)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GLUE file {path!r} does not exist. " + _HOW_TO_POINT)
    ext = path.rsplit(".", 1)[-1].lower()
    if ext in ("tsv", "txt"):
        table = _read_tsv(path, task, quoting)
    elif ext == "csv":
        table = _read_csv(path)
    elif ext in ("jsonl", "json"):
        table = _read_jsonl(path)
    elif ext == "parquet":
        table = _read_parquet(path)
    else:
        raise ValueError(f"Unsupported GLUE file type {path!r}: use one of .{', .'.join(FILE_EXTENSIONS)}.")
    return _split_from_table(task, table, split)


def read_split(task: str | GlueTask, split: str, data_dir: str | os.PathLike | None = None) -> Split:
    """Read ``split`` ("train", "dev" or "test") of ``task`` from ``data_dir`` (default: $GLUE_DIR).

    The task folder may be named like GLUE's download (``SST-2``) or the hub config (``sst2``);
    the file is ``<split>.<ext>`` (``dev`` may also be ``validation``; MNLI uses ``dev_matched``).

    Example::

        train = read_split("SST-2", "train", data_dir="../shared/data/glue")
        train.num_examples   # 67349
    """
    return read_file(task, find_split_file(task, split, data_dir), split=split)


# --------------------------------------------------------------------------------------------
# The Hugging Face hub
# --------------------------------------------------------------------------------------------

_TRUTHY = ("1", "true", "yes", "on")


def hub_offline_reason(timeout_s: float = 1.5, host: str = "huggingface.co") -> str | None:
    """Why the hub cannot be used right now, or None when it looks reachable.

    Checks HF_HUB_OFFLINE / HF_DATASETS_OFFLINE first, then tries one TCP connection with a short
    timeout, so an offline machine fails in about a second instead of after a minute of retries.

    Example::

        if (reason := hub_offline_reason()) is not None:
            print("offline:", reason)
    """
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUTHY:
            return f"{var}={os.environ[var]} is set"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return None
    except OSError as e:
        return f"{host} is unreachable ({e.__class__.__name__}: {e})"


def load_hub_split(task: str | GlueTask, split: str) -> Split:
    """Download (or read from the `datasets` cache) ``split`` of ``task`` from ``nyu-mll/glue``.

    Fails fast, before touching `datasets`, when the machine is offline.

    Example::

        dev = load_hub_split("sst2", "dev")   # needs network (or a warm datasets cache)
    """
    task = get_task(task)
    if split not in SPLIT_NAMES:
        raise ValueError(f"Unknown split {split!r}: use one of {', '.join(SPLIT_NAMES)}.")
    reason = hub_offline_reason()
    if reason is not None:
        raise ConnectionError(
            f"Cannot load GLUE task {task.display_name} from the Hugging Face hub: {reason}. "
            "Use local files instead: " + _HOW_TO_POINT
        )
    import datasets  # heavy import, only on this path

    hub_split = task.hub_splits[split]
    dataset = datasets.load_dataset(HUB_PATH, task.hub_config, split=hub_split)
    columns = dataset.to_dict()
    n = dataset.num_rows
    table = _Table(f"{HUB_PATH}/{task.hub_config}[{hub_split}]", columns, list(range(1, n + 1)), "row")
    return _split_from_table(task, table, split)


def load_split(
    task: str | GlueTask,
    split: str,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
) -> Split:
    """Load ``split`` of ``task`` from local files or the hub.

    ``source="local"`` reads ``data_dir`` or $GLUE_DIR; ``"hub"`` uses ``datasets``; ``"auto"`` reads
    local files when a directory is given (argument or $GLUE_DIR) and the hub otherwise.

    Example::

        dev = load_split("sst2", "dev", source="local", data_dir="../shared/data/glue")
    """
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be 'auto', 'local' or 'hub', got {source!r}.")
    local = source == "local" or (source == "auto" and (data_dir is not None or os.environ.get("GLUE_DIR")))
    if local:
        return read_split(task, split, data_dir)
    return load_hub_split(task, split)


# --------------------------------------------------------------------------------------------
# The CondLoRA protocol: 90% train / 10% validation from GLUE train, GLUE dev as test
# --------------------------------------------------------------------------------------------


class GlueSplits(NamedTuple):
    """The three splits of the protocol: ``test`` is GLUE dev (GLUE test has no labels)."""

    train: Split
    validation: Split
    test: Split


def split_train_validation(split: Split, validation_fraction: float = 0.1, seed: int = 1) -> tuple[Split, Split]:
    """Shuffle ``split`` with ``seed`` and cut off the first ``round(n * fraction)`` rows as validation.

    This reproduces the official CondLoRA code, ``ds.shuffle(seed=1)`` then ``select``: the
    permutation is ``numpy.random.default_rng(seed).permutation(n)``, as in `datasets`.

    Example::

        train, validation = split_train_validation(read_split("rte", "train", glue_dir))
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

    Example::

        splits = protocol_splits("sst2", data_dir="../shared/data/glue")
        splits.train.num_examples, splits.validation.num_examples, splits.test.num_examples
        # (60614, 6735, 872)
    """
    full_train = load_split(task, "train", data_dir, source)
    train, validation = split_train_validation(full_train, validation_fraction, seed)
    return GlueSplits(train, validation, load_split(task, "dev", data_dir, source))
