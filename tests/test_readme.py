"""The README's example runs as written."""

import re

from tests.conftest import REPO


def test_readme_example_runs(capsys):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README.md has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    for variant in ("lora", "bonly", "aonly", "condlora", "mtlora"):
        assert f"adapter '{variant}'" in out
