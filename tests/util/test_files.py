"""write_json: readable JSON, parents created, never half a file."""

import json

import numpy as np
import pytest

from jaxlora.util import write_json


def test_writes_sorted_indented_json_and_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "results.json"
    write_json(path, {"z": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "z": 1\n}\n'


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "config.json"
    write_json(path, {"version": 1})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json(path, {"version": 2, "array": np.zeros(2)})
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
