"""Where the shared GLUE copies are, for the data tests that read real files."""

import pathlib

import pytest

GLUE_DIR = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"shared GLUE data not found at {GLUE_DIR}")
