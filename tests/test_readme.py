"""README.md's Python example runs exactly as written, and CI (``.ci/run``) runs exactly
README's install and test commands, plus lint, format and type checks, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
#: what .ci/run may do besides README's commands: set up and enter its fresh venv, and the
#: house checks (style.md: lint, format, types)
CI_SETUP = (
    r"set -euo pipefail",
    r'cd "\$\(dirname "\$0"\)/\.\."',
    r'VENV="\$\{PHYSGEN_CI_VENV:-\$\(mktemp -d\)/venv\}"',
    r'python3 -m venv "\$VENV"',
    r'source "\$VENV/bin/activate"',
    r"python -m pip install --quiet --upgrade pip",
)
CI_CHECKS = ["ruff check .", "ruff format --check .", "mypy physgen"]


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


def shell_lines(text: str) -> list[str]:
    """The commands of a shell script or block: comments (whole-line or trailing) and blank
    lines dropped."""
    out = []
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line:
            out.append(line)
    return out


def readme_commands() -> dict[str, str]:
    """README's first ``bash`` block: its install, main-job and test commands."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert block, "README has no bash block"
    install, main_job, tests = shell_lines(block.group(1))
    return {"install": install, "main": main_job, "tests": tests}


def test_ci_runs_exactly_readmes_install_and_test_commands():
    """A fresh clone passes with README's commands only if CI runs those and nothing more:
    README's install line (verbatim), the checks, README's test line (verbatim)."""
    readme = readme_commands()
    assert readme["install"].startswith("pip install torch==") and "pytest" in readme["tests"]
    lines = shell_lines(CI.read_text())
    rest = [ln for ln in lines if not any(re.fullmatch(p, ln) for p in CI_SETUP)]
    assert rest == [readme["install"], *CI_CHECKS, readme["tests"]], rest


def test_readme_install_brings_what_the_suite_runs():
    """Every distribution the suite exercises is in README's install command: physgen with
    the extras that hold pytest-xdist (``-n``), sphinx and scikit-learn, and the example
    plugin whose tests and docs examples run."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the tomli backport (a physgen dependency there)
        import tomli as tomllib  # type: ignore[no-redef]

    install = readme_commands()["install"]
    assert 'pip install -e ".[dev]"' in install
    assert "./plugins/example_external" in install
    assert (ROOT / "plugins/example_external/pyproject.toml").is_file()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    dev = " ".join(extras["dev"])
    assert "pytest-xdist" in dev and "physgen[docs,images]" in dev
    assert "-n " in readme_commands()["tests"]
