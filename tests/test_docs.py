"""The documentation site: everything public is documented, every example runs, -W builds.

* Coverage: every hook of :mod:`physgen.registry.hookspecs`, every CLI command (walking the
  click group,
  so commands added later count), and every public name of every public physgen module (its
  ``__all__``, or the functions and classes it defines) has a docstring (``#:`` comment for
  data) and a module-level ``automodule`` directive under ``docs/``. The slow build test then
  checks each one is in the built inventory — i.e. really appears on a page.
* Examples: the ```` ```python ```` blocks of each page run in order in one namespace (in a
  temporary directory); ```` ```console ```` / ```` ```bash ```` blocks run their ``physgen``
  commands through click's ``CliRunner``. A block is skipped only when the line before its
  fence is a MyST comment ``% test: skip (reason)``.
* Build: ``sphinx-build -W`` (warnings are errors), offline.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import inspect
import os
import pkgutil
import posixpath
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: packages not covered by the API pages: the CLI has its own generated reference, and
#: ``physgen.registry.builtin`` only hands the built-in lists to the hooks
NOT_API = ("physgen.cli", "physgen.registry.builtin")
SKIP_MARK = re.compile(r"^% test: skip \(.+\)\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w-]+)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


# --------------------------------------------------------------------------------------
# What is public
# --------------------------------------------------------------------------------------


#: public modules that failed to import (reported by the module test, skipped by the rest)
IMPORT_ERRORS: dict[str, str] = {}


def public_modules() -> list[ModuleType]:
    """``physgen`` and every importable submodule without a leading underscore."""
    import physgen

    out: list[ModuleType] = [physgen]

    def walk(pkg: ModuleType) -> None:
        for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
            if info.name.rsplit(".", 1)[-1].startswith("_") or info.name.startswith(NOT_API):
                continue
            try:
                module = importlib.import_module(info.name)
            except Exception as err:  # reported by test_every_public_module_...
                IMPORT_ERRORS[info.name] = repr(err)
                continue
            out.append(module)
            if info.ispkg:
                walk(module)

    walk(physgen)
    return out


def public_names(module: ModuleType) -> list[str]:
    """``__all__``, or the functions and classes the module itself defines."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return [n for n in names if n != "__version__"]
    return [
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    ]


def is_code(obj: Any) -> bool:
    return inspect.isclass(obj) or inspect.isroutine(obj)


def own_docstring(obj: Any) -> str:
    """The object's own docstring; the one ``dataclass`` generates (its signature) is none."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    doc = (doc or "").strip()
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__):
        return ""
    return doc


def attr_docs(module_name: str) -> set[str]:
    """Names of module-level data documented by a ``#:`` comment (what autodoc renders)."""
    from sphinx.pycode import ModuleAnalyzer

    analyzer = ModuleAnalyzer.for_module(module_name)
    return {name for (scope, name) in analyzer.find_attr_docs() if scope == ""}


def documented_objects() -> dict[str, tuple[str, str]]:
    """Every public object: qualified name where the docs must show it -> (role, problem).

    Functions and classes are documented where they are defined (re-exports are skipped on
    the re-exporting module's page) unless that module is private; data where a ``#:``
    comment documents it."""
    modules = public_modules()
    found: dict[str, tuple[str, str]] = {}
    for module in modules:
        for name in public_names(module):
            obj = getattr(module, name)
            if is_code(obj):
                home = obj.__module__
                if not home.startswith("physgen") or "._" in home:  # shown where re-exported
                    home = module.__name__
                qual = f"{home}.{obj.__qualname__}"
                problem = "" if own_docstring(obj) else "no docstring"
                found.setdefault(qual, ("class" if inspect.isclass(obj) else "function", problem))
                continue
            homes = [
                m.__name__
                for m in modules
                if getattr(m, name, None) is obj and name in attr_docs(m.__name__)
            ]
            if homes:
                found.setdefault(f"{homes[0]}.{name}", ("data", ""))
            else:
                found.setdefault(f"{module.__name__}.{name}", ("data", "no #: doc comment"))
    return found


def automoduled() -> set[str]:
    """Modules named by an ``automodule`` directive anywhere under docs/."""
    names: set[str] = set()
    for page in DOCS.rglob("*.md"):
        if "_build" not in page.parts:
            names.update(re.findall(r"^\.\. automodule:: ([\w.]+)\s*$", page.read_text(), re.M))
    return names


def hooks() -> dict[str, Any]:
    from physgen.registry import hookspecs

    return {
        n: f
        for n, f in vars(hookspecs).items()
        if inspect.isfunction(f) and hasattr(f, f"{hookspecs.PROJECT}_spec")
    }


def cli_commands() -> dict[str, Any]:
    """``"physgen train"`` -> the click command, for every command and subcommand."""
    import click

    from physgen.cli import cli

    out: dict[str, Any] = {}

    def walk(cmd: click.Command, path: str, ctx: click.Context) -> None:
        out[path] = cmd
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, f"{path} lists {name} but cannot load it"
                walk(sub, f"{path} {name}", click.Context(sub, parent=ctx, info_name=name))

    walk(cli, "physgen", click.Context(cli, info_name="physgen"))
    return out


# --------------------------------------------------------------------------------------
# Coverage, checked on the sources (fast)
# --------------------------------------------------------------------------------------


def test_every_public_module_has_an_automodule_entry():
    missing = sorted({m.__name__ for m in public_modules()} - automoduled())
    assert not IMPORT_ERRORS, f"public modules that do not import: {IMPORT_ERRORS}"
    assert not missing, f"add `.. automodule:: NAME` to a page under docs/api/ for: {missing}"


def test_every_public_name_has_a_docstring():
    pytest.importorskip("sphinx", reason="the docs extra (sphinx) reads #: comments")
    missing = {q: p for q, (_, p) in documented_objects().items() if p}
    assert not missing, f"undocumented public names: {missing}"


def test_every_hook_is_documented():
    found = hooks()
    assert {"physgen_processes", "physgen_samplers"} <= set(found)
    missing = [n for n, f in found.items() if not (f.__doc__ or "").strip()]
    assert not missing, f"hooks without a docstring: {missing}"
    assert "physgen.registry.hookspecs" in automoduled()


def test_every_cli_command_is_documented():
    commands = cli_commands()
    assert {"physgen train", "physgen sample", "physgen plugins"} <= set(commands)
    missing = [p for p, c in commands.items() if not (c.help or c.short_help or "").strip()]
    assert not missing, f"commands without help text: {missing}"
    text = (DOCS / "cli.md").read_text()
    assert ".. click:: physgen.cli:cli" in text and ":nested: full" in text


# --------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------


def blocks(page: Path, langs: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """``(line, lang, body)`` of the fenced blocks in ``langs`` that are not marked
    ``% test: skip (...)``."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group("lang") not in langs:
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if SKIP_MARK.match(before):
            continue
        assert not before.startswith("% test"), f"{page}: malformed skip mark {before!r}"
        out.append((text[: m.start()].count("\n") + 1, m.group("lang"), m.group("body")))
    return out


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)


def _id(page: Path) -> str:
    return str(page.relative_to(DOCS))


PY_PAGES = [p for p in pages() if blocks(p, ("python",))]
SHELLS = ("console", "bash", "shell")
SHELL_PAGES = [p for p in pages() if blocks(p, SHELLS)]


#: the example plugin the plugin guide's examples run (README's install command installs it)
EXAMPLE_PLUGIN = "physgen-yukawa"


def skip_without_example_plugin(page: Path, langs: tuple[str, ...]) -> None:
    """Skip, naming the install, a page whose examples use the example plugin when it is not
    installed (an optional part: the core and its own tests do not need it)."""
    import importlib.metadata as md

    if not any("yukawa" in body for _, _, body in blocks(page, langs)):
        return
    try:
        md.distribution(EXAMPLE_PLUGIN)
    except md.PackageNotFoundError:
        pytest.skip(
            f"{_id(page)} runs the example plugin {EXAMPLE_PLUGIN}, which is not installed: "
            "pip install -e ./plugins/example_external (README's install command does)"
        )


def test_the_site_has_runnable_examples():
    assert any(p.name == "quickstart.md" for p in PY_PAGES)
    assert any(p.name == "quickstart.md" for p in SHELL_PAGES)


@pytest.mark.slow
@pytest.mark.parametrize("page", PY_PAGES, ids=_id)
def test_python_examples_run(page, tmp_path, monkeypatch):
    skip_without_example_plugin(page, ("python",))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": f"__docs_{page.stem}__"}
    for line, _, code in blocks(page, ("python",)):
        try:
            exec(compile(code, f"{page}:{line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{_id(page)}, block at line {line}: {err!r}") from err


def shell_commands(body: str, lang: str) -> list[tuple[dict[str, str], list[str]]]:
    """The ``physgen`` commands of a console/bash block, as (environment, argv)."""
    out = []
    for raw in body.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if lang == "console":
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        env = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        assert words and words[0] == "physgen", (
            f"only physgen commands run; mark the block `% test: skip (reason)`: {raw!r}"
        )
        out.append((env, words[1:]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("page", SHELL_PAGES, ids=_id)
def test_shell_examples_run(page, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from physgen.cli import cli

    skip_without_example_plugin(page, SHELLS)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for line, lang, body in blocks(page, SHELLS):
        for env, argv in shell_commands(body, lang):
            result = runner.invoke(cli, argv, env=env, catch_exceptions=False)
            where = f"{_id(page)}, block at line {line}: physgen {shlex.join(argv)}"
            assert result.exit_code == 0, f"{where}: {result.output}"


# --------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    pytest.importorskip("sphinx", reason="install the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("furo", reason="install the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("myst_parser", reason="install the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("sphinx_click", reason="install the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    proc = subprocess.run(
        [*cmd, str(DOCS), str(out)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, f"sphinx-build -W failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def inventory(site: Path) -> dict[str, dict[str, Any]]:
    from sphinx.util.inventory import InventoryFile

    with open(site / "objects.inv", "rb") as f:
        inv = InventoryFile.load(f, "", posixpath.join)
    return {role: dict(items) for role, items in inv.items()}


@pytest.mark.slow
def test_site_builds_with_warnings_as_errors_and_shows_every_public_name(built_site):
    inv = inventory(built_site)
    shown = {name for role, items in inv.items() if role.startswith("py:") for name in items}
    missing = sorted(q for q in documented_objects() if q not in shown)
    assert not missing, f"public names absent from the built API pages: {missing}"
    missing_hooks = [n for n in hooks() if f"physgen.registry.hookspecs.{n}" not in shown]
    assert not missing_hooks, f"hooks absent from the built hook reference: {missing_hooks}"


@pytest.mark.slow
def test_site_shows_every_cli_command_and_the_generated_tables(built_site):
    cli_html = (built_site / "cli.html").read_text()
    for path in cli_commands():
        anchor = path.replace(" ", "-")
        assert f'id="{anchor}"' in cli_html, f"{path} is not in the CLI reference"
    from physgen.registry import get_registry

    solvers = (built_site / "solvers.html").read_text()
    for name in get_registry().names("samplers"):
        cell = f'<span class="pre">{name}</span></code></p></td>'
        assert cell in solvers, f"sampler {name} is not in the solver table"
    bench = (built_site / "benchmarks.html").read_text()
    images = re.findall(r'<img[^>]+src="([^"]+)"', bench)
    assert images, "the benchmarks page shows no figures"
    for src in images:
        assert (built_site / src).is_file(), f"benchmarks page image {src} was not copied"


@pytest.mark.slow
def test_cli_reference_keeps_double_dashes(built_site):
    """Examples and option help on the CLI page paste as written: ``--steps``, never the en
    dash ``–steps`` that smart quotes make of it, and example blocks keep their spacing."""
    text = html.unescape(re.sub(r"<[^>]+>", "", (built_site / "cli.html").read_text()))
    assert "physgen sample --sampler dpmpp_2m --steps 10" in text
    assert "--opt S_churn=40" in text  # an option's help text
    dashed = sorted(set(re.findall(r"\S*–[A-Za-z]\S*", text)))
    assert not dashed, f"en dashes where options were written: {dashed}"


def test_plugin_guide_examples_skip_with_a_reason_without_the_example_plugin(monkeypatch):
    """A fresh install without the optional example plugin skips (naming the install) the
    plugin guide's examples instead of failing them; other pages still run."""
    import importlib.metadata as md

    real = md.distribution

    def distribution(name: str):  # type: ignore[no-untyped-def]
        if name == EXAMPLE_PLUGIN:
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "distribution", distribution)
    for langs in (("python",), SHELLS):
        with pytest.raises(pytest.skip.Exception, match=r"pip install -e \./plugins"):
            skip_without_example_plugin(DOCS / "plugin-guide.md", langs)
        skip_without_example_plugin(DOCS / "quickstart.md", langs)  # no skip


def test_formula_citations_point_at_the_shipped_reference_page():
    """Code and docs cite formulas as ``docs/math.md §N`` (a page that ships with the project,
    not a file outside the repository), and every cited section exists on that page."""
    import re

    root = Path(__file__).resolve().parents[1]
    sections = set(re.findall(r"^## §(\d+) ", (root / "docs" / "math.md").read_text(), re.M))
    bad = []
    for folder in ("physgen", "plugins", "tests", "benchmarks", "docs"):
        for path in (root / folder).rglob("*"):
            skip = path.name == "math.md" or "_build" in path.parts
            if path.suffix not in (".py", ".md") or skip:
                continue
            text = path.read_text(encoding="utf-8")
            for match in re.finditer(r"(\S*)math\.md §(\d+)((?:, §\d+)*)", text):
                cited = [match.group(2), *re.findall(r"§(\d+)", match.group(3))]
                if not match.group(1).endswith("docs/") or set(cited) - sections:
                    bad.append(f"{path.relative_to(root)}: {match.group(0)}")
    assert not bad, bad
