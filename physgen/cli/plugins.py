"""``physgen plugins``."""

from __future__ import annotations

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
    from physgen.cli.run import describe_plugins

    click.echo(describe_plugins(kind))
