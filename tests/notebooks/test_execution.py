"""Every notebook runs top to bottom with papermill, ``-p SMOKE True``, offline, on 8 host devices.

This is CI's notebook run (the README's test command includes it; ``-m "not slow"`` leaves it out).
The kernel imports this checkout's jaxlora (PYTHONPATH), sees ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
so the mesh code spans 8 devices, and has no Hugging Face Hub (HF_HUB_OFFLINE=1, set in tests/conftest.py),
so each notebook takes its offline path. A cell error fails the test. Each executed notebook must show
a plot (an image/png output) and print its final metric; running on CPU, it must have said in one line
that no TPU was found, and 01 that the Hub was unreachable.
"""

import os
import re
import time

import nbformat
import pytest

papermill = pytest.importorskip("papermill")

from tests.conftest import REPO  # noqa: E402

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
FINAL = re.compile(r"^Final\b.*=\s*[-+0-9.e]+", re.M)


def _text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _has_image(notebook) -> bool:
    return any("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_smoke_run(path, tmp_path, monkeypatch, glue_dir, minilm_path):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    out = tmp_path / path.name
    start = time.perf_counter()
    # cwd=tmp_path: a notebook's relative WORKDIR (runs/...) lands in the test's folder.
    papermill.execute_notebook(str(path), str(out), parameters={"SMOKE": True}, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)
    print(f"{path.stem}: smoke run {time.perf_counter() - start:.0f} s")  # for docs/NOTEBOOKS.md, not a limit
    executed = nbformat.read(out, as_version=4)
    text = _text(executed)
    assert _has_image(executed), f"{path.name}: no plot among the outputs"
    assert FINAL.search(text), f"{path.name}: no 'Final ... = <number>' line printed"
    assert "No TPU found" in text, f"{path.name}: on CPU the devices cell must say that no TPU was found"
    if path.stem.startswith("01_"):
        assert "Hugging Face Hub unreachable" in text, f"{path.name}: offline, it must say so and take the presets"
