"""TOML configuration for the CLI (stdlib ``tomllib``): one table per command.

A command whose options are a config dataclass (``train``: :class:`physgen.cli.train.TrainRun`
and :class:`physgen.training.TrainConfig`; ``sample``: :class:`physgen.cli.sample.SampleConfig`)
takes exactly those fields as keys (``batch_size``, or ``batch-size``), each checked by
:func:`physgen.training.config.check_value`: the TOML value must already have the field's type
(``steps = 5.9`` and ``steps = true`` are errors, not 5 and 1), an unknown key or a nested table
is an error. Repeatable ``NAME=VALUE`` options (``process_options``, ``net_options``,
``data_options``, ``sampler_options``, ``schedule_options``) are sub-tables of name = value.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Any

from physgen.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: command -> the config dataclasses declaring its options, as (module, class name)
COMMAND_CONFIGS = {
    "train": (("physgen.cli.train", "TrainRun"), ("physgen.training.config", "TrainConfig")),
    "sample": (("physgen.cli.sample", "SampleConfig"),),
}


def command_configs(command: str) -> tuple[type, ...]:
    """The config dataclasses of ``command`` (empty for a command without)."""
    specs = COMMAND_CONFIGS.get(command, ())
    return tuple(getattr(importlib.import_module(m), name) for m, name in specs)


def _typed_section(path: Path, table: str, values: dict[str, Any]) -> dict[str, Any]:
    from physgen.training.config import check_value, field_types

    fields = {}
    for cls in command_configs(table):
        types = field_types(cls)
        fields.update({f.name: (f, *types[f.name]) for f in dataclasses.fields(cls)})
    section: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key not in fields:
            raise ConfigError(
                f"{path}: [{table}] has no key {raw_key!r} (keys: {', '.join(fields)})"
            )
        f, base, optional = fields[key]
        if base == tuple[str, ...]:
            if not isinstance(value, dict) or any(isinstance(v, dict) for v in value.values()):
                raise ConfigError(
                    f"{path}: [{table}] {key} must be a table of name = value, got {value!r}"
                )
            value = tuple(f"{k}={_text(v)}" for k, v in value.items())
        elif isinstance(value, dict):
            raise ConfigError(f"{path}: [{table}] {key} must be a value, not a table")
        try:
            section[key] = check_value(key, value, base, optional, f.metadata)
        except ConfigError as err:
            raise ConfigError(f"{path}: [{table}] {err}") from None
    return section


def _text(value: Any) -> str:
    """A TOML value as ``-o`` would spell it (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_toml_defaults(path: str | Path, commands: set[str]) -> dict[str, dict[str, Any]]:
    """Read ``path`` into click's ``default_map``: one table per command (see the module)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    out: dict[str, dict[str, Any]] = {}
    for table, values in data.items():
        if table not in commands or not isinstance(values, dict):
            raise ConfigError(
                f"{path}: unknown table [{table}] (tables: {', '.join(sorted(commands))})"
            )
        if table in COMMAND_CONFIGS:
            out[table] = _typed_section(path, table, values)
            continue
        section: dict[str, Any] = {}
        for key, value in values.items():
            if key in ("process_options", "net_options", "sampler_options"):
                if not isinstance(value, dict):
                    raise ConfigError(
                        f"{path}: [{table}] {key} must be a table of name = value, "
                        f"got {type(value).__name__}"
                    )
                value = tuple(f"{k}={v}" for k, v in value.items())
            section[key.replace("-", "_")] = value
        out[table] = section
    return out
