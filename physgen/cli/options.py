"""Command-line options derived from a config dataclass (fields declared with
:func:`physgen.training.config.option`): one click option per field, its
``PHYSGEN_<COMMAND>_<FLAG>`` environment variable, and the check that no other variable with the
command's prefix is set.

Derivation rules (``tests/test_config.py`` checks them):

* the flag is ``--<field name with - for _>`` unless the field declares ``flag``; a bool field
  is a switch (``--x``, or ``--x/--no-x`` when it defaults to true);
* the variable is ``PHYSGEN_<COMMAND>_<flag without -- in upper case, _ for ->``
  (``--net-opt`` → ``PHYSGEN_TRAIN_NET_OPT``); a repeatable option (``tuple[str, ...]``) takes
  its values from the variable separated by whitespace (``PHYSGEN_TRAIN_OPTION="D=128 rho=7"``);
* the value is checked by :func:`physgen.training.config.check_value` on every surface.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import click

from physgen.errors import ConfigError
from physgen.training.config import check_value, field_types, range_text

__all__ = ["check_env", "click_options", "envvar", "flag", "split"]


def flag(f: dataclasses.Field) -> str:
    """The long flag of field ``f``."""
    return str(f.metadata.get("flag") or "--" + f.name.replace("_", "-"))


def envvar(command: str, f: dataclasses.Field) -> str:
    """The environment variable of field ``f`` of ``command``."""
    return f"PHYSGEN_{command.upper()}_{flag(f)[2:].replace('-', '_').upper()}"


class FieldType(click.ParamType):
    """A field's value from the command line or environment (strings) or a config file (typed
    values, passed by click's ``default_map``), checked by ``check_value``."""

    def __init__(self, f: dataclasses.Field, base: Any, optional: bool):
        self.field, self.base, self.optional = f, base, optional
        choices = f.metadata.get("choices")
        self.name = (
            "|".join(choices) if choices else {int: "integer", float: "number"}.get(base, "text")
        )

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"[{self.name}]" if self.field.metadata.get("choices") else self.name.upper()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            words = self.field.metadata.get("words", ())
            if isinstance(value, str) and self.base in (int, float) and value not in words:
                value = _number(value, self.base, self.field.name)
            return check_value(self.field.name, value, self.base, False, self.field.metadata)
        except ConfigError as err:
            self.fail(str(err), param, ctx)


def _number(text: str, base: type, name: str) -> int | float:
    try:
        return int(text) if base is int else float(text)
    except ValueError:
        kind = "an integer" if base is int else "a number"
        raise ConfigError(f"{name} must be {kind}, got {text!r}") from None


def click_options(command: str, *configs: type) -> Callable[[Any], Any]:
    """A decorator adding one click option per field of ``configs`` (in order)."""
    params = []
    for cls in configs:
        types = field_types(cls)
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", True):
                continue
            base, optional = types[f.name]
            names = [flag(f)] + ([f.metadata["short"]] if f.metadata.get("short") else [])
            help_ = f.metadata["help"]
            if range_text(f.metadata):
                help_ += f"  [{range_text(f.metadata)}]"
            kw: dict[str, Any] = dict(envvar=envvar(command, f), help=help_)
            if base is bool:
                if f.default:
                    names[0] = f"{names[0]}/--no-{names[0][2:]}"
                kw.update(is_flag=True, default=f.default, show_default=bool(f.default))
            elif base == tuple[str, ...]:
                kw.update(multiple=True, type=FieldType(f, str, False), metavar="NAME=VALUE",
                          default=f.default)  # fmt: skip
            elif base == tuple[float, ...]:
                kw.update(multiple=True, type=FieldType(f, float, False), default=f.default)
            elif base == tuple[float, float]:
                kw.update(nargs=2, type=FieldType(f, float, False), default=f.default)
            else:
                kw.update(type=FieldType(f, base, optional), default=f.default)
                kw["show_default"] = f.default is not None and "[default:" not in help_
            params.append(click.option(*names, f.name, **kw))

    def decorate(fn: Any) -> Any:
        for option in reversed(params):
            fn = option(fn)
        return fn

    return decorate


def split(values: dict[str, Any], *configs: type) -> list[dict[str, Any]]:
    """The command's keyword arguments split by config class (each its own fields)."""
    return [{f.name: values[f.name] for f in dataclasses.fields(c) if f.name in values}
            for c in configs]  # fmt: skip


def check_env(command: str, *configs: type) -> None:
    """Refuse a ``PHYSGEN_<COMMAND>_*`` variable that names no option (one line naming it)."""
    prefix = f"PHYSGEN_{command.upper()}_"
    known = {envvar(command, f) for c in configs for f in dataclasses.fields(c)}
    for name in sorted(os.environ):
        if name.startswith(prefix) and name not in known:
            raise ConfigError(
                f"environment variable {name} names no option of `physgen {command}` "
                f"(variables: {', '.join(sorted(known))})"
            )
