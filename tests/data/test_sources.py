"""Where splits come from: folder name styles, $GLUE_DIR, clear errors for missing paths, a fast offline hub error."""

import shutil
import time

import pytest

from jaxlora import data as jdata
from jaxlora import util
from tests.data.glue_files import GLUE_DIR, needs_glue


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
