"""The ``physgen`` command line: a thin layer over the library.

Commands are imported lazily (click's LazyGroup pattern), so ``physgen --help`` does not import
torch. Option precedence: command line > ``PHYSGEN_<COMMAND>_<OPTION>`` environment variables >
``--config FILE.toml`` (a table per command) > defaults — click's own ``default_map`` and
``auto_envvar_prefix`` give exactly this order. A :class:`~physgen.errors.PhysgenError` (a
user error) prints one line and exits 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

COMMANDS = {
    "train": ("physgen.cli.train", "train", "Train a process on a dataset; writes a checkpoint."),
    "sample": ("physgen.cli.sample", "sample", "Sample a checkpoint; writes an HDF5 run + PNG."),
    "plugins": ("physgen.cli.plugins", "plugins", "List processes, samplers, networks, datasets."),
    "bench": ("physgen.cli.bench", "bench", "Train and compare every process; one HDF5 + plots."),
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or its help is shown)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table above, so listing commands imports none of them.
        with formatter.section("Commands"):
            formatter.write_dl([(n, COMMANDS[n][2]) for n in self.list_commands(ctx)])

    def invoke(self, ctx: click.Context) -> Any:
        from physgen.errors import PhysgenError

        try:
            return super().invoke(ctx)
        except PhysgenError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise UserError(str(err)) from None
        except OSError as err:  # a file the user named (missing, unwritable, disk full...)
            if ctx.obj and ctx.obj.get("debug"):
                raise
            what = err.strerror or str(err) or type(err).__name__
            raise UserError(f"{what}: {err.filename}" if err.filename else what) from None
        except (MemoryError, RuntimeError) as err:  # --n-data 1e12: "needs N GiB", one line
            from physgen.errors import allocation_error

            mapped = allocation_error(err)
            if mapped is None or (ctx.obj and ctx.obj.get("debug")):
                raise
            raise UserError(str(mapped)) from None
        except ValueError as err:  # os.* refuse a path with a NUL byte before any I/O
            if "null byte" not in str(err) or (ctx.obj and ctx.obj.get("debug")):
                raise
            raise UserError(f"a path contains a NUL byte ({err})") from None


class UserError(click.ClickException):
    """One line on stderr, exit status 2, no traceback."""

    exit_code = 2

    def format_message(self) -> str:
        return " ".join(self.message.split("\n"))


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    from physgen.cli.config import load_toml_defaults

    try:
        ctx.default_map = load_toml_defaults(value, set(COMMANDS))
    except Exception as err:  # a config error is a user error, reported in one line
        raise UserError(str(err)) from None


@click.group(
    cls=LazyGroup,
    context_settings={"auto_envvar_prefix": "PHYSGEN", "help_option_names": ["-h", "--help"]},
    epilog="""\b
Examples:
  physgen train                       # EDM on 2-D moons, ~1 minute on 2 CPU cores
  physgen sample                      # sample it: HDF5 run file + PNG beside the checkpoint
  physgen train --process pfgmpp -o D=128 --dataset 8gaussians
  physgen sample --sampler dpmpp_2m --steps 10
  physgen plugins                     # what is installed, and each option""",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config,
    expose_value=False,
    is_eager=True,
    help="TOML file with a table per command ([train], [sample]); command line and "
    "PHYSGEN_* environment variables take precedence.",
)
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="physgen")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """physgen: train and compare physics-inspired generative processes (diffusion,
    PFGM++, flow matching, consistency models) on the same data, network and solvers."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    try:
        cli(prog_name="physgen")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
