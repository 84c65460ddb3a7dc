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
        assert f"adapter {variant}" in out


def test_readme_own_model_example_runs(capsys):
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own model, Linen and NNX", 1)[1]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    assert "closes over" not in block and "def train_step(trainable, opt_state, frozen, x)" in block
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "linen loss" in out and "adapter lora" in out
    for module in ("query", "key", "value", "out", "0", "1"):  # NNX: attention and both nnx.List members
        assert any(line.split()[0] == module for line in out.splitlines() if line.strip())
