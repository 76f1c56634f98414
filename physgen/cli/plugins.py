"""``physgen plugins``."""

from __future__ import annotations

import dataclasses

import click

EPILOG = """\b
Examples:
  physgen plugins                    # everything, with options
  physgen plugins --kind samplers    # one kind
  PHYSGEN_DISABLE_PLUGINS=flow physgen plugins   # skip a plugin by entry-point name"""


@click.command(epilog=EPILOG)
@click.option(
    "--kind",
    type=click.Choice(
        ["plugins", "processes", "samplers", "networks", "datasets", "metrics", "couplings"]
    ),
    default=None,
    help="Show only one kind.",
)
def plugins(kind: str | None) -> None:
    """List installed plugins and what they provide: processes (with their views and
    options), samplers (view, order, options), networks, datasets, metrics, couplings.
    A plugin that failed to load is listed as broken, with the reason."""
    click.echo(describe_plugins(kind))


def describe_plugins(kind: str | None) -> str:
    """The text of ``physgen plugins``."""
    from physgen.registry import KINDS, get_registry
    from physgen.sampling import describe_views

    reg = get_registry()
    lines: list[str] = []
    if kind in (None, "plugins"):
        lines.append("plugins:")
        for p in reg.plugins:
            status = "ok" if p.ok else f"BROKEN: {p.reason}"
            lines.append(f"  {p.name:<14} {p.package:<22} {status}")
    for k in KINDS:
        if kind not in (None, k):
            continue
        lines.append(f"{k}:")
        for entry, plugin in reg.items(k):
            head = f"  {entry.name:<14} {entry.description}  [{plugin.name}]"
            lines.append(head)
            if k == "processes":
                lines.append(f"      views: {describe_views(entry.cls)}")
                lines.extend(_option_lines(entry.cls.Options))
            elif k == "samplers":
                order = "no order" if entry.order is None else f"order {entry.order:g}"
                order += ", adaptive" if entry.adaptive else ""
                kind_ = "stochastic" if entry.stochastic else "deterministic"
                lines.append(f"      needs view: {entry.view}; {order}; {kind_}")
                if entry.options:
                    opts = ", ".join(f"{a}={b}" for a, b in entry.options.items())
                    lines.append(f"      options: {opts}")
            elif k == "networks" and getattr(entry, "config", None):
                opts = ", ".join(f"{a}={b}" for a, b in entry.config.items())
                lines.append(f"      options: {opts}")
        for name, claimants in reg.conflicts(k).items():
            who = " and ".join(f"{p.name} ({p.package})" for p in claimants)
            lines.append(f"  {name:<14} CONFLICT: claimed by {who}; unavailable")
    return "\n".join(lines)


def _option_lines(options_cls: type) -> list[str]:
    from physgen.core.process import option_docs

    docs = option_docs(options_cls)
    out = []
    for f in dataclasses.fields(options_cls):
        doc = docs.get(f.name, "")
        out.append(f"      -o {f.name}={f.default}" + (f"   # {doc}" if doc else ""))
    return out
