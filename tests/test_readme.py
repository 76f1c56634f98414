"""README.md's Python example runs exactly as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    match = re.search(r"NFE (\d+), sliced W2 ([0-9.]+)", out)
    assert match, out
    assert int(match.group(1)) == 35
    assert float(match.group(2)) < 0.15  # the prior N(0, 80²) is ~80 away


def test_readme_names_install_main_job_and_tests():
    text = README.read_text()
    head = text[: text.index("## ")]
    assert "pip install torch==2.13.0" in head and 'pip install -e ".[dev]"' in head
    assert "physgen train" in head and "pytest" in head
