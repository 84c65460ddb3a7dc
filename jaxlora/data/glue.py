"""The GLUE task table: what each task is, and every usual spelling of its name.

A GLUE task is a description (which text columns, how many labels, which metric the papers report,
the CondLoRA protocol's epoch cap) and files. This module keeps the descriptions in :data:`TASKS`;
:mod:`~jaxlora.data.readers` reads a file into columns, :mod:`~jaxlora.data.sources` finds the files
(or the hub), :mod:`~jaxlora.data.protocol` cuts the protocol's splits.

Column names are *candidates*, tried in order: the original GLUE TSV name first, then the Hugging
Face ``nyu-mll/glue`` name, then generic export names (``sentence1``/``sentence2``).

>>> task = get_task("STS-B")
>>> task.name, task.num_labels, task.is_regression, task.primary_metric
('stsb', 1, True, 'pearson')
"""

from __future__ import annotations

import re
from typing import Mapping, NamedTuple

__all__ = ["GlueTask", "TASKS", "HUB_PATH", "SPLIT_NAMES", "get_task", "task_names", "normalise_name"]

HUB_PATH = "nyu-mll/glue"
SPLIT_NAMES = ("train", "dev", "test")


class GlueTask(NamedTuple):
    """Everything the data pipeline and the metrics need to know about one GLUE task.

    Column names are *candidates*, tried in order: the original GLUE TSV name first, then the
    Hugging Face ``nyu-mll/glue`` name, then generic export names (``sentence1``/``sentence2``).

    >>> task = get_task("MRPC")
    >>> task.num_labels, task.is_pair, task.text_a_columns   # GLUE's TSV column first, then the hub's
    (2, True, ('#1 String', 'sentence1'))
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


def normalise_name(name: str) -> str:
    """A task or folder name without case, dashes, underscores or spaces, for comparisons.

    >>> normalise_name("STS-B"), normalise_name("mnli_mm")
    ('stsb', 'mnlimm')
    """
    return re.sub(r"[-_ ]", "", name).lower()


def task_names() -> tuple[str, ...]:
    """The canonical names of all registered tasks.

    >>> task_names()[:3]
    ('cola', 'sst2', 'mrpc')
    """
    return tuple(TASKS)


def get_task(task: str | GlueTask) -> GlueTask:
    """Look a task up by any usual spelling: ``"SST-2"``, ``"sst2"``, ``"STS-B"``, ``"mnli-mm"``.

    >>> get_task("SST-2").name, get_task("mnli-mm").name
    ('sst2', 'mnli_mm')
    """
    if isinstance(task, GlueTask):
        return task
    key = normalise_name(str(task))
    key = normalise_name(_ALIASES.get(key, key))
    for canonical, spec in TASKS.items():
        if key == normalise_name(canonical) or key == normalise_name(spec.display_name):
            return spec
    raise ValueError(
        f"Unknown GLUE task {task!r}. Known tasks: {', '.join(TASKS)} "
        "(spellings like 'SST-2', 'sst2', 'STS-B' are accepted)."
    )
