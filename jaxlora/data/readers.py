"""GLUE files into columns: one reader per format, and the quoting rules GLUE's files need.

:func:`read_file` reads the original GLUE TSVs or a Hugging Face export of ``nyu-mll/glue`` (TSV,
CSV, JSONL/JSON, parquet) into one columnar structure, :class:`Split`. Every malformed row is
reported with its file and line.

Reading rules that matter (each one was a real bug somewhere):

- GLUE's own TSVs contain bare ``"`` characters (MRPC has a field that *starts* with one and never
  closes it), so they are split on tabs with no quote processing at all (``csv.QUOTE_NONE``).
- Hugging Face exports written with ``Dataset.to_csv`` *do* quote fields CSV-style
  (``"said it found ""extensive"" damage"``), so those are un-quoted. The two are told apart by the
  header (a known original GLUE header means no quoting) and, for other headers, by checking that
  every field starting with ``"`` is a well-formed quoted field.
- MRPC's header starts with a UTF-8 BOM; SST-2 sentences end with a space. Both are stripped.
- CoLA's original train/dev files have no header at all (source, label, author mark, sentence).

>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "dev.tsv"
>>> _ = path.write_text("sentence\\tlabel\\nit is great \\t1\\n")
>>> split = read_file("sst2", path, split="dev")
>>> split.texts_a, split.labels.tolist()
(['it is great'], [1])
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, NamedTuple, Sequence

import numpy as np

from jaxlora import errors
from jaxlora.data.glue import GlueTask, get_task

__all__ = ["Split", "take", "read_file", "FILE_EXTENSIONS", "Table", "split_from_table", "HOW_TO_POINT"]

# Tried in this order when a task folder holds several formats of the same split.
FILE_EXTENSIONS = ("tsv", "csv", "jsonl", "json", "parquet")

HOW_TO_POINT = (
    "Set GLUE_DIR to the folder that holds the task folders (e.g. GLUE_DIR/SST-2/train.tsv) "
    "or pass data_dir=..."
)



class Split(NamedTuple):
    """One split of a task as columns. ``texts_b`` is None for single-sentence tasks.

    ``labels`` is int32 class ids (``-1`` where the file has no label, e.g. GLUE test) or, for a
    regression task, float32 scores. ``idx`` is the example id from the file (its ``idx``/``index``/
    ``id`` column) or the row number when the file has none.

    >>> split = Split(["good", "bad"], None, np.array([1, -1], np.int32), np.arange(2))
    >>> split.num_examples, split.has_labels
    (2, True)
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

    >>> split = Split(["a", "b", "c"], ["x", "y", "z"], np.array([0, 1, 0], np.int32), np.arange(3))
    >>> take(split, [2, 0]).texts_b
    ['z', 'x']
    """
    indices = np.asarray(indices, dtype=np.int64)
    texts_a = [split.texts_a[i] for i in indices]
    texts_b = None if split.texts_b is None else [split.texts_b[i] for i in indices]
    return Split(texts_a, texts_b, split.labels[indices], split.idx[indices])



class Table(NamedTuple):
    """Rows of a file as named columns, with the file line of each row for error messages."""

    path: str
    columns: dict[str, list[Any]]
    lines: list[int]  # 1-based line (or row) number of each row
    unit: str  # "line" or "row"


def _malformed(path: str, unit: str, line: int, what: str) -> errors.DataError:
    return errors.DataError(f"Malformed GLUE file {path}, {unit} {line}: {what}",
                            f"Fix that {unit}, or point GLUE_DIR (--config.data_dir) at intact GLUE files.", path=path)


def _undecodable(path: str, err: UnicodeDecodeError) -> errors.DataError:
    """The line and column of the first bytes of ``path`` that are not UTF-8."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as bad:
                return errors.DataError(
                    f"GLUE file {path}, line {number}: byte {line[bad.start:bad.start + 1]!r} at column "
                    f"{bad.start + 1} is not UTF-8 text.",
                    "Convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8), or fix that line.",
                    path=path,
                )
    return errors.DataError(f"GLUE file {path} is not UTF-8 text ({err.reason}).",
                            "Convert the file to UTF-8.", path=path)


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


def _read_tsv(path: str, task: GlueTask, quoting: str) -> Table:
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


def _read_csv(path: str) -> Table:
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


def _table_from_rows(path: str, header: list[str], rows: list[list[str]], lines: list[int]) -> Table:
    width = len(header)
    for fields, line in zip(rows, lines):
        if len(fields) != width:
            raise _malformed(
                path, "line", line,
                f"expected {width} tab-separated fields ({', '.join(header)}), found {len(fields)}. "
                "Check for a stray tab or a line break inside a sentence.",
            )
    columns = {name: [fields[i] for fields in rows] for i, name in enumerate(header)}
    return Table(path, columns, lines, "line")


def _read_jsonl(path: str) -> Table:
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
    return Table(path, columns, lines, unit)


def _read_parquet(path: str) -> Table:
    import pyarrow.parquet as pq  # pyarrow comes with `datasets`; imported only when needed

    columns = pq.read_table(path).to_pydict()
    n = len(next(iter(columns.values()))) if columns else 0
    return Table(path, columns, list(range(1, n + 1)), "row")


def _pick(table: Table, candidates: Sequence[str], what: str, required: bool) -> str | None:
    for name in candidates:
        if name in table.columns:
            return name
    if required:
        raise ValueError(
            f"GLUE file {table.path} has no {what} column: looked for {', '.join(map(repr, candidates))}, "
            f"found {', '.join(map(repr, table.columns))}."
        )
    return None


def _parse_label(value: Any, task: GlueTask, table: Table, row: int, split: str) -> float | int:
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
    lowest = -1 if split == "test" else 0  # -1 marks an unlabeled row, which only a test file may have
    if not (lowest <= label < task.num_labels):
        unlabeled = " (-1 marks an unlabeled row, which only a test file may have)" if label == -1 else ""
        raise _malformed(
            table.path, table.unit, table.lines[row],
            f"label {label} is not one of {task.display_name}'s classes 0..{task.num_labels - 1}{unlabeled}.",
        )
    return label


def split_from_table(task: GlueTask, table: Table, split: str) -> Split:
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
        parsed = [_parse_label(v, task, table, row, split) for row, v in enumerate(table.columns[col_label])]
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

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "dev.jsonl"
    >>> _ = path.write_text('{"sentence1": "A", "sentence2": "B", "label": 1, "idx": 4}\\n')
    >>> split = read_file("rte", path, split="dev")
    >>> split.texts_a, split.texts_b, split.labels.tolist(), split.idx.tolist()
    (['A'], ['B'], [1], [4])
    """
    task = get_task(task)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GLUE file {path!r} does not exist. " + HOW_TO_POINT)
    ext = path.rsplit(".", 1)[-1].lower()
    try:
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
    except UnicodeDecodeError as err:
        raise _undecodable(path, err) from None
    return split_from_table(task, table, split)


