"""Options: how a process declares its options, and the one check every option goes through.

A process's options are a frozen dataclass whose fields are declared with :func:`option` — a
default (a plain, JSON-serialisable value) and a one-line help text, kept in the field's
metadata so ``physgen plugins`` and the docs read it without parsing source::

    @dataclass(frozen=True)
    class MyOptions:
        D: float = option(128.0, "augmented dimensions D > 0; inf is the Gaussian limit")

Samplers, networks, datasets and σ-schedules declare theirs as keyword defaults; every one of
these — and a process's dataclass — is checked by :func:`typed_options`: an unknown name is a
one-line :class:`~physgen.errors.ConfigError` listing the known ones, and a string (``-o D=128``
on the command line) is converted to the type of the option's default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from physgen.errors import ConfigError

__all__ = ["convert_value", "option", "option_docs", "parse_options", "typed_options"]

T = TypeVar("T")


def option(default: T, help: str) -> T:
    """A dataclass field with ``default`` and a one-line ``help`` (shown by ``physgen
    plugins`` and the docs)."""
    return dataclasses.field(default=default, metadata={"help": help})


def option_docs(options_cls: type) -> dict[str, str]:
    """The one-line help of each field of an options dataclass that has one, by field name."""
    return {
        f.name: f.metadata["help"] for f in dataclasses.fields(options_cls) if "help" in f.metadata
    }


def typed_options(
    owner: str, values: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``values`` checked against the option names of ``defaults`` (the first unknown one is a
    one-line ConfigError ``"<owner> has no option 'x' (options: ...)"``), each string converted
    to the type of its default by :func:`convert_value`."""
    for name in values:
        if name not in defaults:
            known = ", ".join(defaults) or "none"
            raise ConfigError(f"{owner} has no option {name!r} (options: {known})")
    return {k: convert_value(v, defaults[k], name=k, owner=owner) for k, v in values.items()}


def parse_options(options_cls: type, values: Mapping[str, Any], *, owner: str) -> Any:
    """Build an options dataclass from a mapping of (possibly string) values.

    Strings are converted to the field's declared type (``"inf"`` → ``math.inf``,
    ``"true"``/``"false"`` → bool), so ``-o D=128`` on the command line and ``D=128`` in Python
    mean the same. Unknown names and unconvertible values are one-line :class:`ConfigError`.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(options_cls)}
    kwargs = typed_options(owner, values, defaults)
    try:
        return options_cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{owner}: {err}") from None


def convert_value(raw: Any, default: Any, *, name: str, owner: str) -> Any:
    """Convert a string ``raw`` to the type of ``default`` (bool, int, float); other values
    pass through. A bad string is a one-line :class:`ConfigError`."""
    if not isinstance(raw, str) or isinstance(default, str) or default is None:
        return raw
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = type(default).__name__
        raise ConfigError(f"{owner}: option {name}={raw!r} is not a valid {kind}") from None
    return raw
