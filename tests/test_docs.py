"""The Python examples in the README and docs run as written against a real store."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/format.md", "docs/query.md"]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("doc", DOCS)
def test_python_examples_run(
    doc: str, minilm_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = python_blocks(ROOT / doc)
    assert blocks, f"{doc} has no python example"
    # the docs call the store demo.acts or my.acts; both are the real MiniLM store here
    for name in ("demo.acts", "my.acts"):
        os.symlink(minilm_store, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, f"{doc} example", "exec"), {"__name__": "__doc_example__"})


def test_readme_commands_on_the_demo_store_run(
    minilm_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shlex
    import shutil

    from actstore.cli import main

    shutil.copytree(minilm_store, tmp_path / "demo.acts")
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "README.md").read_text()
    commands = [
        line
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
        for line in block.splitlines()
        if line.startswith("actstore ") and " demo.acts " in line
    ]
    assert len(commands) >= 8
    for line in commands:
        assert main(shlex.split(line)[1:]) == 0, line
