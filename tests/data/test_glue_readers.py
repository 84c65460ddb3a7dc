"""GLUE registry and readers: real files in ../shared/data/glue, HF exports, errors, the 90/10 split."""

import os
import pathlib
import shutil
import time

import numpy as np
import pytest

from jaxlora import data as jdata
from jaxlora import util

GLUE_DIR = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"shared GLUE data not found at {GLUE_DIR}")

# Row counts from ../shared/data/README.md.
ROWS = {
    "sst2": (67349, 872, 1821),
    "mrpc": (3668, 408, 1725),
    "stsb": (5749, 1500, 1379),
    "rte": (2490, 277, 3000),
}


# ------------------------------------------------------------------------------------- registry


def test_registry_covers_the_eight_tasks_with_the_paper_metrics():
    expected_primary = {
        "cola": "mcc", "stsb": "pearson", "sst2": "accuracy", "mrpc": "accuracy",
        "rte": "accuracy", "qnli": "accuracy", "qqp": "accuracy", "mnli": "accuracy",
    }
    for name, metric in expected_primary.items():
        task = jdata.get_task(name)
        assert task.primary_metric == metric
        assert metric in task.metric_names
        assert task.hub_config in ("cola", "sst2", "mrpc", "stsb", "rte", "qnli", "qqp", "mnli")
    assert jdata.get_task("stsb").num_labels == 1 and jdata.get_task("stsb").is_regression
    assert jdata.get_task("stsb").metric_names == ("pearson", "spearman")
    assert "f1" in jdata.get_task("mrpc").metric_names and "f1" in jdata.get_task("qqp").metric_names
    assert jdata.get_task("mnli").num_labels == 3 and jdata.get_task("mnli").hub_splits["dev"] == "validation_matched"
    assert not jdata.get_task("sst2").is_pair and jdata.get_task("rte").is_pair


@pytest.mark.parametrize("spelling,name", [("SST-2", "sst2"), ("sst2", "sst2"), ("STS-B", "stsb"),
                                           ("CoLA", "cola"), ("MNLI-mm", "mnli_mm"), ("mnli", "mnli")])
def test_task_spellings(spelling, name):
    assert jdata.get_task(spelling).name == name


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown GLUE task 'wnli'.*sst2"):
        jdata.get_task("wnli")


# ------------------------------------------------------------------------------ real GLUE files


@needs_glue
@pytest.mark.parametrize("task", sorted(ROWS))
def test_real_files_row_counts_and_labels(task):
    spec = jdata.get_task(task)
    for split_name, rows in zip(jdata.SPLIT_NAMES, ROWS[task]):
        split = jdata.read_split(task, split_name, GLUE_DIR)
        assert split.num_examples == rows == len(split.labels) == len(split.idx)
        assert (split.texts_b is not None) == spec.is_pair
        assert len(np.unique(split.idx)) == rows
        if split_name == "test":
            assert not split.has_labels
            continue
        assert split.has_labels
        if spec.is_regression:
            assert split.labels.dtype == np.float32
            assert split.labels.min() >= 0.0 and split.labels.max() <= 5.0
        else:
            assert split.labels.dtype == np.int32
            assert set(np.unique(split.labels)) == set(range(spec.num_labels))


@needs_glue
def test_quotes_are_preserved_in_original_and_exported_tsvs():
    # MRPC (GLUE original, unquoted): a field that opens a quote and never closes it.
    mrpc = jdata.read_split("mrpc", "dev", GLUE_DIR)
    assert mrpc.texts_b[0] == '"The foodservice pie business does not fit our long-term growth strategy.'
    mrpc_train = jdata.read_split("mrpc", "train", GLUE_DIR)
    assert mrpc_train.texts_a[0] == (
        'Amrozi accused his brother, whom he called "the witness", of deliberately distorting his evidence.'
    )
    # RTE (HF export, CSV-quoted with doubled quotes): un-quoted back to the original sentence.
    rte = jdata.read_split("rte", "train", GLUE_DIR)
    row = int(np.flatnonzero(rte.idx == 12)[0])
    assert rte.texts_a[row] == (
        'Valero Energy Corp., on Monday, said it found "extensive" additional damage '
        "at its 250,000-barrel-per-day Port Arthur refinery."
    )
    assert not any('""' in t for t in rte.texts_a + rte.texts_b)


@needs_glue
def test_sst2_trailing_spaces_and_mrpc_bom_are_stripped():
    sst2 = jdata.read_split("sst2", "dev", GLUE_DIR)
    assert sst2.texts_a[0] == "it 's a charming and often affecting journey ."
    assert not any(t != t.strip() for t in sst2.texts_a)
    # The BOM sits before MRPC's "Quality" header: finding the label column proves it was stripped.
    assert jdata.read_split("mrpc", "dev", GLUE_DIR).labels[:3].tolist() == [1, 0, 0]


@needs_glue
def test_folder_name_styles_and_glue_dir_env(tmp_path, monkeypatch):
    (tmp_path / "sst2").mkdir()
    shutil.copy(GLUE_DIR / "SST-2" / "dev.tsv", tmp_path / "sst2" / "validation.tsv")
    split = jdata.read_split("SST-2", "dev", tmp_path)
    assert split.num_examples == 872
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    assert jdata.load_split("sst2", "dev").num_examples == 872  # auto: GLUE_DIR set -> local files
    # data_dir may also be the task folder itself.
    assert jdata.read_split("sst2", "dev", tmp_path / "sst2").num_examples == 872


# ---------------------------------------------------------------------------- Hugging Face exports


def _export(tmp_path, split, fmt):
    import datasets  # only the export side of these tests needs it

    columns = {"sentence1": split.texts_a, "sentence2": split.texts_b, "label": split.labels.tolist(),
               "idx": split.idx.tolist()}
    dataset = datasets.Dataset.from_dict(columns)
    folder = tmp_path / "rte"
    folder.mkdir(exist_ok=True)
    path = folder / f"train.{fmt}"
    if fmt == "csv":
        dataset.to_csv(str(path))
    elif fmt == "tsv":
        dataset.to_csv(str(path), sep="\t")
    elif fmt == "jsonl":
        dataset.to_json(str(path))
    else:
        dataset.to_parquet(str(path))
    return path


@needs_glue
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_hf_exports_read_back_identically(tmp_path, fmt):
    original = jdata.read_split("rte", "dev", GLUE_DIR)
    # Add the awkward cases: an embedded tab and a field that starts with a quote.
    original = original._replace(
        texts_a=['"Quoted" at the start', "a\ttab inside"] + original.texts_a[2:]
    )
    _export(tmp_path, original, fmt)
    read = jdata.read_split("rte", "train", tmp_path)
    assert read.texts_a == original.texts_a and read.texts_b == original.texts_b
    np.testing.assert_array_equal(read.labels, original.labels)
    np.testing.assert_array_equal(read.idx, original.idx)


def test_hub_style_unlabeled_regression_test_split(tmp_path):
    (tmp_path / "stsb").mkdir()
    (tmp_path / "stsb" / "test.jsonl").write_text(
        '{"sentence1": "a", "sentence2": "b", "label": -1.0, "idx": 0}\n'
    )
    split = jdata.read_split("STS-B", "test", tmp_path)
    assert np.isnan(split.labels).all() and not split.has_labels


def test_generic_single_sentence_export_and_string_labels(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.jsonl").write_text(
        '{"sentence": "good film", "label": 1}\n{"sentence": "dull", "label": "negative"}\n'
    )
    split = jdata.read_split("sst2", "train", tmp_path)
    assert split.texts_a == ["good film", "dull"] and split.texts_b is None
    assert split.labels.tolist() == [1, 0] and split.idx.tolist() == [0, 1]


@pytest.mark.parametrize(
    "task,filename,text,expected_a,expected_b,expected_labels",
    [
        # CoLA's original train/dev files have no header line.
        ("cola", "train.tsv", "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n",
         ["Our friends won't buy this analysis.", "They drank the pub."], None, [1, 0]),
        ("qnli", "dev.tsv", "index\tquestion\tsentence\tlabel\n0\tWhat is it?\tIt is \"x\".\tentailment\n"
         "1\tWho?\tNobody.\tnot_entailment\n", ["What is it?", "Who?"], ['It is "x".', "Nobody."], [0, 1]),
        ("qqp", "train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\tHow?\tWhy?\t0\n"
         "8\t3\t4\t\"Quote\tUnclosed?\t1\n", ["How?", '"Quote'], ["Why?", "Unclosed?"], [0, 1]),
        ("mnli", "dev_matched.tsv",
         "\t".join(jdata.glue._MNLI_DEV_HEADER) + "\n"
         + "\t".join(["0", "1", "1e", "fiction", "(a)", "(b)", "(A)", "(B)", "A man.", "A person.",
                      "entailment", "entailment", "neutral", "entailment", "entailment", "entailment"]) + "\n"
         + "\t".join(["1", "2", "2c", "travel", "(a)", "(b)", "(A)", "(B)", "Rain.", "Sun."]
                     + ["contradiction"] * 6) + "\n",
         ["A man.", "Rain."], ["A person.", "Sun."], [0, 2]),
    ],
)
def test_original_formats_of_tasks_not_in_shared_data(tmp_path, task, filename, text, expected_a, expected_b,
                                                       expected_labels):
    spec = jdata.get_task(task)
    folder = tmp_path / spec.folder_names[0]
    folder.mkdir()
    (folder / filename).write_text(text, encoding="utf-8")
    split_name = {"train.tsv": "train", "dev.tsv": "dev", "dev_matched.tsv": "dev"}[filename]
    split = jdata.read_split(task, split_name, tmp_path)
    assert split.texts_a == expected_a and split.texts_b == expected_b
    assert split.labels.tolist() == expected_labels


# ------------------------------------------------------------------------------------- errors


def test_missing_glue_dir_says_to_set_it(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"GLUE_DIR is not set.*data_dir"):
        jdata.read_split("sst2", "train")
    with pytest.raises(FileNotFoundError, match=r"'/no/such/glue' \(from data_dir\) does not exist.*GLUE_DIR"):
        jdata.read_split("sst2", "train", "/no/such/glue")


def test_missing_task_folder_and_split_file_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No folder for GLUE task CoLA in .*(CoLA or cola).*GLUE_DIR"):
        jdata.read_split("cola", "train", tmp_path)
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "train.tsv").write_text("gj04\t1\t\tFine.\n")
    with pytest.raises(FileNotFoundError, match=r"No dev file for GLUE task CoLA in '.*CoLA'.*dev\.\{tsv"):
        jdata.read_split("cola", "dev", tmp_path)


def test_malformed_rows_name_file_line_and_problem(tmp_path):
    folder = tmp_path / "MRPC"
    folder.mkdir()
    path = folder / "train.tsv"
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    path.write_text(header + "1\t1\t2\tA.\tB.\n0\t3\t4\tOnly one sentence\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}, line 3: expected 5 tab-separated fields .* found 4"):
        jdata.read_split("mrpc", "train", tmp_path)
    path.write_text(header + "1\t1\t2\tA.\tB.\nmaybe\t3\t4\tC.\tD.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}, line 3: label 'maybe' is not an integer in \[0, 2\)"):
        jdata.read_split("mrpc", "train", tmp_path)
    path.write_text(header + "7\t1\t2\tA.\tB.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2: label 7 is out of range for MRPC"):
        jdata.read_split("mrpc", "train", tmp_path)


def test_malformed_jsonl_and_missing_columns(tmp_path):
    folder = tmp_path / "RTE"
    folder.mkdir()
    path = folder / "train.jsonl"
    path.write_text('{"sentence1": "a", "sentence2": "b", "label": 0}\n{"sentence1": "a", "sente\n')
    with pytest.raises(ValueError, match=rf"{path}, line 2: invalid JSON"):
        jdata.read_split("rte", "train", tmp_path)
    path.write_text('{"premise": "a", "label": 0}\n')
    with pytest.raises(ValueError, match=r"has no first-sentence column: looked for 'sentence1'.*found 'premise'"):
        jdata.read_split("rte", "train", tmp_path)


# ----------------------------------------------------------------------------------------- hub


def test_offline_hub_fails_fast_and_points_at_local_files(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GLUE_DIR", raising=False)
    assert "HF_HUB_OFFLINE" in util.hub_offline_reason()
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"Cannot load GLUE task SST-2 from the Hugging Face hub: "
                                              r"HF_HUB_OFFLINE=1 is set.*GLUE_DIR"):
        jdata.load_split("sst2", "train")  # source="auto" with no GLUE_DIR goes to the hub
    assert time.perf_counter() - start < 1.0


# ----------------------------------------------------------------------- CondLoRA protocol split


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
