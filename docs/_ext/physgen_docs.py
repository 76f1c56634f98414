"""Directives that generate physgen's reference tables from the installed plugins at build time.

* ``{physgen-samplers}``: every registered :class:`~physgen.solvers.Sampler` — name, the view
  it needs, declared order, whether it is stochastic, its NFE rule, default options, plugin.
* ``{physgen-processes}``: every registered process — name, views, plugin, description.
* ``{physgen-options} NAME``: the options dataclass of process ``NAME`` — option, default, the
  one-line help in the field's metadata (:func:`physgen.core.options.option_docs`).
* ``{physgen-exports}``: the names ``import physgen`` exports, each linked to where it is
  documented.

The NFE rule is measured, not transcribed: the sampler's declared ``nfe(grid, **options)`` is
evaluated on grids of 4, 8 and 16 steps (at its default options) and written as ``a·n + b``
when it is affine in ``n``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

PLUGIN_LINKS = {
    "diffusion": "processes/diffusion",
    "poisson": "processes/pfgmpp",
    "flow": "processes/flow",
    "consistency": "processes/consistency",
}


def _cell(text: Any) -> str:
    """A list-table cell: one line, pipes and newlines flattened."""
    return " ".join(str(text).split()) or " "


def _list_table(header: list[str], rows: list[list[str]], widths: str = "auto") -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {_cell(row[0])}")
        lines.extend(f"     - {_cell(c)}" for c in row[1:])
    return lines


def _affine(ns: list[int], values: list[int]) -> str:
    """``a·n + b`` through the points ``(n, value)`` when they are affine, else the values."""
    a = (values[1] - values[0]) / (ns[1] - ns[0])
    b = values[0] - a * ns[0]
    if all(math.isclose(a * n + b, v) for n, v in zip(ns, values, strict=True)) and a == int(a):
        a_txt = "" if a == 1 else f"{int(a)}"
        if a == 0:
            return f"{int(b)}"
        term = f"{a_txt}n"
        if b == 0:
            return term
        return f"{term} {'+' if b > 0 else '−'} {abs(int(b))}"
    return ", ".join(f"{v} (n={n})" for n, v in zip(ns, values, strict=True))


def nfe_rule(sampler: Any, grid_kind: str) -> str:
    """The sampler's NFE for ``n`` steps on a σ-grid into 0 (``"sigma"``) or a t-grid (``"t"``)."""
    import torch

    from physgen.core.process import karras_sigmas

    if sampler.nfe is None:
        return "adaptive (counted at run time)"
    params = inspect.signature(sampler.nfe).parameters
    options = {k: v for k, v in sampler.options.items() if k in params}
    ns = [4, 8, 16]
    values = []
    for n in ns:
        if grid_kind == "sigma":
            grid = karras_sigmas(n, 0.002, 80.0)
        else:
            grid = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        values.append(int(sampler.nfe(grid, **options)))
    return _affine(ns, values)


def _order(order: float | None) -> str:
    if order is None:
        return "—"
    return str(int(order)) if float(order).is_integer() else str(order)


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"``{k}={v!r}``" for k, v in options.items()) or "—"


class _TableDirective(SphinxDirective):
    has_content = False

    def lines(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        lines = self.lines()
        if str(self.env.doc2path(self.env.docname)).endswith(".md"):
            # MyST parses nested content as Markdown: hand it the reST through eval-rst.
            lines = ["````{eval-rst}", *lines, "````"]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="<physgen-docs>"), 0, container)
        return container.children


class SamplersDirective(_TableDirective):
    """The solver table, from the registered samplers."""

    def lines(self) -> list[str]:
        from physgen.registry import get_registry

        rows = []
        for s, plugin in get_registry().items("samplers"):
            t_rule = nfe_rule(s, "t") if s.view == "ode" else "—"
            rows.append(
                [
                    f"``{s.name}``",
                    f"``{s.view}``",
                    _order(s.order),
                    "yes" if s.stochastic else "no",
                    nfe_rule(s, "sigma"),
                    t_rule,
                    _options_text(s.options),
                    plugin.name,
                    s.description,
                ]
            )
        header = [
            "sampler",
            "view",
            "order",
            "stochastic",
            "NFE, n steps into σ = 0",
            "NFE, n steps on a t-grid",
            "options (defaults)",
            "plugin",
            "description",
        ]
        return _list_table(header, rows)


class ProcessesDirective(_TableDirective):
    """Every registered process with its views."""

    def lines(self) -> list[str]:
        from physgen.registry import get_registry
        from physgen.sampling import describe_views

        rows = []
        for entry, plugin in get_registry().items("processes"):
            page = PLUGIN_LINKS.get(plugin.name)
            where = f":doc:`{plugin.name} </{page}>`" if page else plugin.name
            views = describe_views(entry.cls)
            cls = f":class:`~{entry.cls.__module__}.{entry.cls.__qualname__}`"
            rows.append([f"``{entry.name}``", views, where, cls, entry.description])
        return _list_table(["process", "views", "plugin", "class", "description"], rows)


class OptionsDirective(_TableDirective):
    """The options of one process (``-o name=value``), from its dataclass."""

    required_arguments = 1

    def lines(self) -> list[str]:
        from physgen.core.options import option_docs
        from physgen.registry import get_registry
        from physgen.sampling import describe_views

        entry = get_registry().process(self.arguments[0])
        docs = option_docs(entry.cls.Options)
        rows = []
        for f in dataclasses.fields(entry.cls.Options):
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
            rows.append([f"``{f.name}``", f"``{default!r}``", docs.get(f.name, "")])
        views = describe_views(entry.cls)
        intro = [
            f"``{entry.name}`` — {entry.description}. Views: {views}.",
            "",
        ]
        return intro + _list_table(["option", "default", "meaning"], rows)


class ExportsDirective(_TableDirective):
    """What ``import physgen`` exports, linked to the defining module's entry."""

    def lines(self) -> list[str]:
        from sphinx.pycode import ModuleAnalyzer

        import physgen

        rows = []
        for name in sorted(physgen._EXPORTS):
            obj = getattr(physgen, name)
            if inspect.isclass(obj) or inspect.isroutine(obj):
                role = "class" if inspect.isclass(obj) else "func"
                target = f"{obj.__module__}.{obj.__qualname__}"
                doc = (inspect.getdoc(obj) or "").split("\n\n")[0]
            else:  # data: documented by a ``#:`` comment where it is defined
                role, module = "data", physgen._EXPORTS[name]
                target = f"{module}.{name}"
                attr_docs = ModuleAnalyzer.for_module(module).find_attr_docs()
                doc = " ".join(attr_docs.get(("", name), []))
            rows.append([f"``physgen.{name}``", f":py:{role}:`{target}`", doc])
        return _list_table(["name", "documented at", "summary"], rows)


# -- one entry per object: re-exports are documented where they are defined ------------------

_current_module: list[str] = [""]


def _note_module(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: Any) -> None:
    if what == "module":
        _current_module[0] = name


def _skip_reexport(app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any) -> Any:
    """Skip a module member that another physgen module defines (``physgen.io.read_run`` is
    ``physgen.io.runs.read_run``): every object is documented once, where it lives."""
    if what != "module":
        return None
    home = getattr(obj, "__module__", None)
    if not isinstance(home, str) or not home.startswith("physgen") or "._" in home:
        return None  # not physgen's, or defined in a private module: documented here
    if home != _current_module[0]:
        return True
    return None


def _examples_as_code(app: Sphinx, ctx: Any, lines: list[str]) -> None:
    """sphinx-click renders a ``\\b`` block of a command's epilog as a line block, i.e. as
    prose: spaces collapse and ``--option`` could be typeset as a dash. An ``Examples:`` block
    is commands to paste, so it becomes a literal shell block (rewritten in place)."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "| Examples:":
            out.append(lines[i])
            i += 1
            continue
        out += ["**Examples**", "", ".. code-block:: shell", ""]
        i += 1
        while i < len(lines) and lines[i].startswith("|"):
            out.append("   " + lines[i][1:].strip())  # '| ' then the command; drop the indent
            i += 1
    lines[:] = out


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("sphinx-click-process-epilog", _examples_as_code)
    app.connect("autodoc-process-docstring", _note_module)
    app.connect("autodoc-skip-member", _skip_reexport)
    app.add_directive("physgen-samplers", SamplersDirective)
    app.add_directive("physgen-processes", ProcessesDirective)
    app.add_directive("physgen-options", OptionsDirective)
    app.add_directive("physgen-exports", ExportsDirective)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
