"""TOML configuration for the CLI (stdlib ``tomllib``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from physgen.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def load_toml_defaults(path: str | Path, commands: set[str]) -> dict[str, dict[str, Any]]:
    """Read ``path`` into click's ``default_map``: one table per command, keys named like the
    command's options (``batch-size`` or ``batch_size``). ``-o`` process options go in a
    sub-table ``[train.process_options]``."""
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
