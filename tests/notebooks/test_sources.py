"""The notebooks as committed: each jupytext .py agrees with its .ipynb, the .ipynb carries no outputs,
the first cells do what a Colab user needs, and the cells use jaxlora's public API only.

The rule for outputs: a committed ``.ipynb`` has none (no outputs, no execution counts), so no output
can be stale; CI runs every notebook (``test_execution.py``) and docs/NOTEBOOKS.md records the runs.
After editing ``notebooks/NAME.py``: ``jupytext --to ipynb notebooks/NAME.py`` writes the pair.
"""

import ast
import pathlib
import re

import jax.numpy as jnp
import nbformat
import pytest

jupytext = pytest.importorskip("jupytext")

from tests.conftest import REPO  # noqa: E402

NOTEBOOKS = REPO / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.py"))
REGENERATE = "regenerate it with: jupytext --to ipynb {py}"


def _cells(notebook) -> list[tuple]:
    return [(cell.cell_type, cell.source.strip(), tuple(cell.metadata.get("tags", ()))) for cell in notebook.cells]


def _code(py: pathlib.Path) -> list[str]:
    return [cell.source for cell in jupytext.read(py).cells if cell.cell_type == "code"]


def test_every_notebook_is_a_pair():
    assert SOURCES, "notebooks/ holds no jupytext .py sources"
    pythons = {p.stem for p in SOURCES}
    notebooks = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert pythons == notebooks, f"unpaired: .py only {sorted(pythons - notebooks)}, .ipynb only {sorted(notebooks - pythons)}"


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_py_and_ipynb_agree(py):
    ipynb = py.with_suffix(".ipynb")
    from_py, committed = jupytext.read(py), nbformat.read(ipynb, as_version=4)
    assert _cells(committed) == _cells(from_py), f"{ipynb.name} and {py.name} disagree: " + REGENERATE.format(py=py)
    assert committed.metadata.get("kernelspec", {}).get("name") == "python3", f"{ipynb.name}: kernelspec python3 expected"


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_committed_ipynb_has_no_outputs(py):
    committed = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    dirty = [i for i, cell in enumerate(committed.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, (f"{py.with_suffix('.ipynb').name} is committed with outputs in cells {dirty} (outputs would not be "
                       f"from its own last run): " + REGENERATE.format(py=py))


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_first_cells_install_print_devices_and_take_parameters(py):
    code = _code(py)
    install = code[0]
    assert 'find_spec("jaxlora") is None' in install and "git+https://github.com/jaxlora/jaxlora" in install, (
        f"{py.name}: the first code cell must pip-install jaxlora from the repository URL when it is not importable")
    tagged = [cell for cell in jupytext.read(py).cells if "parameters" in cell.metadata.get("tags", ())]
    assert len(tagged) == 1, f"{py.name}: exactly one cell tagged 'parameters' (papermill injects after it)"
    assert re.search(r"^SMOKE = False\b", tagged[0].source, re.M), f"{py.name}: the parameters cell sets SMOKE = False"
    assert any("jax.devices()" in cell and "No TPU found" in cell for cell in code[:5]), (
        f"{py.name}: an early cell prints the devices found and what to do when there is no TPU")


def _jaxlora_names_used(tree: ast.AST) -> list[str]:
    """Dotted names rooted at jaxlora (`jaxlora.a.b`, `from jaxlora.a import b`) in a parsed cell."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jaxlora":
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.split(".")[0] == "jaxlora"]
        elif isinstance(node, ast.Attribute):
            parts, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                parts.insert(0, inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in ("jaxlora", "theory", "reporting"):
                names.append(".".join([inner.id] + parts))
    return names


def _library_windows(size: int) -> set:
    windows = set()
    for path in (REPO / "jaxlora").rglob("*.py"):
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        windows.update(tuple(lines[i:i + size]) for i in range(len(lines) - size + 1))
    return windows


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_cells_use_the_public_api_only(py):
    code = "\n".join(_code(py))
    tree = ast.parse(code)
    private = sorted({name for name in _jaxlora_names_used(tree) if any(part.startswith("_") for part in name.split("."))})
    assert not private, f"{py.name} uses private jaxlora names: {private}"
    assert "jaxlora" in {name.split(".")[0] for name in _jaxlora_names_used(tree)}, f"{py.name} does not use jaxlora"

    # No copies of library code: no run of 4 non-blank lines (imports aside) that stands in jaxlora/ too.
    size, library = 4, _library_windows(4)
    lines = [line.strip() for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]
    copied = [lines[i:i + size] for i in range(len(lines) - size + 1)
              if tuple(lines[i:i + size]) in library
              and not all(line.startswith(("import ", "from ")) for line in lines[i:i + size])]
    assert not copied, f"{py.name} repeats library code: {copied[:2]}"


def test_out_of_memory_prints_one_line_saying_what_to_do():
    """The known-errors cell of 01, around a real device allocation that cannot fit."""
    cells = [c for c in jupytext.read(NOTEBOOKS / "01_condlora_glue.py").cells if "known-errors" in c.metadata.get("tags", ())]
    assert len(cells) == 1, "01_condlora_glue.py has one cell tagged 'known-errors'"
    namespace: dict = {}
    exec(compile(cells[0].source, "known-errors cell", "exec"), namespace)
    with pytest.raises(SystemExit) as caught:
        with namespace["known_errors"]():
            jnp.zeros((1 << 42,), jnp.float32).block_until_ready()  # 16 TiB: RESOURCE_EXHAUSTED on any device
    message = str(caught.value)
    assert "\n" not in message and "Out of device memory" in message and "BATCH_SIZE" in message, message

    with pytest.raises(ValueError, match="not this one"):  # other errors pass through untouched
        with namespace["known_errors"]():
            raise ValueError("not this one")
