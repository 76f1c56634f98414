"""Argument checks for the library's entry points, so that a wrong type or value is a one-line
:class:`~physgen.errors.ConfigError` naming the argument (as the CLI's are), not an
``AttributeError`` from deep inside.

Each check returns the value (converted where that is lossless, e.g. a numpy integer to
``int``), so a call site reads ``n = check_int("n", n, min=1)``.
"""

from __future__ import annotations

import math
import operator
import os
from typing import Any

from physgen.errors import ConfigError

__all__ = [
    "check_instance",
    "check_int",
    "check_path",
    "check_real",
    "check_shape",
    "check_str",
    "check_tensor",
]


def _shown(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _fail(name: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{name} must be {what}, got {type(value).__name__} {_shown(value)}")


def check_instance(name: str, value: Any, cls: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is an instance of ``cls``; ``what`` says what it must be."""
    if not isinstance(value, cls):
        raise _fail(name, what, value)
    return value


def check_str(name: str, value: Any) -> str:
    """A non-empty string (a registered name)."""
    if not isinstance(value, str) or not value:
        raise _fail(name, "a non-empty string (a registered name)", value)
    return value


def check_path(name: str, value: Any) -> str | os.PathLike[str]:
    """A non-empty path: ``str`` or :class:`os.PathLike`."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise _fail(name, "a file path (str or pathlib.Path)", value)
    return value


def check_int(name: str, value: Any, *, min: int | None = None) -> int:
    """An integer (not a bool, not a float) ``≥ min``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        out = operator.index(value)
    except TypeError:
        raise _fail(name, "an integer", value) from None
    if min is not None and out < min:
        raise ConfigError(f"{name} must be ≥ {min}, got {out}")
    return out


def check_real(
    name: str, value: Any, *, min: float | None = None, max: float | None = None
) -> float:
    """A finite real number in ``[min, max]``."""
    if isinstance(value, bool) or (
        not isinstance(value, (int, float)) and not hasattr(value, "__float__")
    ):
        raise _fail(name, "a real number", value)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise _fail(name, "a real number", value) from None
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be finite, got {out}")
    if (min is not None and out < min) or (max is not None and out > max):
        raise ConfigError(f"{name} must be in [{min}, {max}], got {out}")
    return out


def check_shape(name: str, value: Any) -> tuple[int, ...]:
    """An event shape: a tuple or list of positive integers."""
    if not isinstance(value, (tuple, list)) or not value:
        raise _fail(name, "a non-empty tuple of positive integers", value)
    try:
        return tuple(check_int(f"{name}[{i}]", d, min=1) for i, d in enumerate(value))
    except ConfigError:
        raise _fail(name, "a non-empty tuple of positive integers", value) from None


def check_tensor(name: str, value: Any, *, min_ndim: int = 0) -> Any:
    """A :class:`torch.Tensor` with at least ``min_ndim`` dimensions."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise _fail(name, "a torch.Tensor", value)
    if value.ndim < min_ndim:
        raise ConfigError(
            f"{name} must have ≥ {min_ndim} dimensions, got shape {tuple(value.shape)}"
        )
    return value
