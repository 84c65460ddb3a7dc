"""The protocol presets in configs/ equal the papers' protocols as METHODS.md records them, field by field.

docs/REPRODUCTION.md holds the table (preset, field, value, the words of METHODS.md that give it); this test
loads every preset and compares each field, checks that the quoted words are METHODS.md's, and compares the
per-task learning rates with METHODS.md's learning-rate table itself.
"""

import ast
import importlib
import re

import pytest

from jaxlora import training
from tests.conftest import SHARED
from tests.training.conftest import REPO

METHODS_MD = SHARED / "docs" / "METHODS.md"
# What :offline may change: the CPU budget. Everything else must stay the protocol's.
OFFLINE_BUDGET = {"model", "data_dir", "max_length", "batch_size", "group_by_length", "max_steps", "eval_every",
                  "max_eval_examples", "log_every", "optimizer.learning_rate"}


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table of a markdown text, as rows of stripped cells (the header first, no separator row)."""
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        stripped = line.strip()
        if stripped.startswith("|") and stripped.endswith("|"):
            cells = [c.strip() for c in stripped[1:-1].split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def table_with_header(path, first_cells: list[str]) -> list[list[str]]:
    for table in markdown_tables(path.read_text()):
        if [c.lower() for c in table[0][: len(first_cells)]] == first_cells:
            return table[1:]
    raise AssertionError(f"{path} has no table starting with {first_cells}")


def load_preset(spec: str):
    """``configs/asymmetry_sst2.py:rank=16`` -> that file's config with that argument."""
    path, _, arg = spec.strip("`").partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return module.get_config(arg or None)


def field(config, name: str):
    if name == "epochs":
        return training.config.num_epochs(config)
    value = config
    for part in name.split("."):
        value = value[part]
    return tuple(value) if isinstance(value, list) else value


def _normalised(text: str) -> str:
    return " ".join(text.split())


def _protocol_rows():
    return table_with_header(REPO / "docs" / "REPRODUCTION.md", ["preset", "field", "value", "methods.md says"])


@pytest.fixture(scope="module")
def methods_md() -> str:
    if not METHODS_MD.is_file():
        pytest.skip(f"{METHODS_MD} not found (the shared docs sit beside the repository)")
    return _normalised(METHODS_MD.read_text())


def test_every_preset_field_equals_the_protocol_table_and_the_words_are_methods_mds(methods_md, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(REPO))  # only :offline reads it, and only to check it is a folder
    rows = _protocol_rows()
    assert len(rows) >= 40
    wrong = []
    for preset, name, value, says in rows:
        expected = ast.literal_eval(value.strip("`"))
        got = field(load_preset(preset), name)
        if isinstance(expected, tuple):
            got = tuple(got)
        if got != expected:
            wrong.append(f"{preset} {name}: {got!r} != {expected!r}")
        if _normalised(says) not in methods_md:
            wrong.append(f"{preset} {name}: {says!r} is not in METHODS.md")
    assert not wrong, "\n".join(wrong)


def test_learning_rates_equal_methods_mds_table(methods_md):
    from configs import glue

    table = table_with_header(METHODS_MD, ["task", "lora lr", "condlora lr"])
    names = {"mnli": "mnli", "sst-2": "sst2", "mrpc": "mrpc", "cola": "cola", "qnli": "qnli", "qqp": "qqp",
             "rte": "rte", "sts-b": "stsb"}
    paper = {names[task.lower()]: (float(lora), float(cond)) for task, lora, cond in table}
    assert paper == {t: (glue.LORA_LEARNING_RATES[t], glue.CONDLORA_LEARNING_RATES[t]) for t in paper}
    for task, (lora, cond) in paper.items():
        for preset, expected in (("lora_sst2", lora), ("condlora_sst2", cond), ("asymmetry_sst2", lora)):
            config = load_preset(f"configs/{preset}.py:task={task}")
            assert training.config.learning_rate(config) == expected, (preset, task)
    # One config and one learning rate for LoRA and B-only/A-only under the asymmetry protocol.
    rates = {m: dict(load_preset(f"configs/asymmetry_sst2.py:method={m}").optimizer.task_learning_rates)
             for m in ("lora", "bonly", "aonly")}
    assert rates["lora"] == rates["bonly"] == rates["aonly"]


def _flat(config) -> dict:
    out = {}

    def walk(node, prefix):
        for key in node.keys():
            value = node[key]
            if hasattr(value, "keys") and not isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = value
    walk(config, "")
    return out


@pytest.mark.parametrize("preset", ["configs/condlora_sst2.py", "configs/asymmetry_sst2.py:rank=16",
                                    "configs/mtlora_sst2.py", "configs/glue.py:method=lora,protocol=mtlora"])
def test_offline_changes_only_the_budget(preset, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(REPO))
    full, offline = _flat(load_preset(preset)), _flat(load_preset(preset + ("," if ":" in preset else ":") + "offline"))
    changed = {k for k in full if full[k] != offline[k]}
    assert changed <= OFFLINE_BUDGET, changed - OFFLINE_BUDGET
    assert offline["optimizer.clip_norm"] == 1.0
