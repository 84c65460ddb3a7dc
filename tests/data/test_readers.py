"""GLUE files into columns: real files in ../shared/data/glue, HF exports, malformed rows named."""

import numpy as np
import pytest

import jaxlora.errors
from jaxlora import data as jdata
from tests.data.glue_files import GLUE_DIR, needs_glue

# Row counts from ../shared/data/README.md.
ROWS = {
    "sst2": (67349, 872, 1821),
    "mrpc": (3668, 408, 1725),
    "stsb": (5749, 1500, 1379),
    "rte": (2490, 277, 3000),
}

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
    with pytest.raises(ValueError, match=r"line 2: label 7 is not one of MRPC's classes 0..1\."):
        jdata.read_split("mrpc", "train", tmp_path)
    path.write_text(header + "-1\t1\t2\tA.\tB.\n", encoding="utf-8")  # unlabeled: never trained as a class
    with pytest.raises(jaxlora.errors.DataError, match=r"line 2: label -1 is not one of MRPC's classes 0..1 "
                                                       r"\(-1 marks an unlabeled row, which only a test file may have\)"):
        jdata.read_split("mrpc", "train", tmp_path)


def test_non_utf8_data_names_the_file_line_and_column(tmp_path):
    (tmp_path / "SST-2").mkdir()
    path = tmp_path / "SST-2" / "train.tsv"
    path.write_bytes(b"sentence\tlabel\ngood film\t1\ncaf\xe9 noir\t0\n")
    with pytest.raises(jaxlora.errors.DataError, match=rf"GLUE file {path}, line 3: byte b'\\xe9' at column 4 "
                                                       r"is not UTF-8 text\. Convert the file to UTF-8"):
        jdata.read_split("sst2", "train", tmp_path)


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
