"""Helpers shared by the CLI commands (parsing only; the work happens in the library)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from physgen.errors import ConfigError


def parse_pairs(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    """``("D=128", "rho=7")`` -> ``{"D": "128", "rho": "7"}``; a pair without ``=`` is an error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} must look like name=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def resolve_device(device: str) -> Any:
    """``auto`` -> CUDA when present, else CPU; anything else must be a valid torch device."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r} (try cpu, cuda, cuda:1 or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(
            f"device {device!r} does not exist ({count} CUDA device(s): 0-{count - 1})"
        )
    return dev


def check_new(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless ``--overwrite`` was given."""
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists (pass --overwrite to replace it)")


def command_line() -> str:
    return " ".join(["physgen", *sys.argv[1:]])


def option_params(ctx: click.Context) -> dict[str, Any]:
    """The resolved parameters of the running command, JSON-ready, for the run file."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in ctx.params.items()}


device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Torch device: auto (CUDA when present), cpu, cuda, cuda:1, ...",
)
overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace existing output files instead of refusing."
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
