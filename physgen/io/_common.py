"""Small helpers shared by the file writers: versions, timestamps, one-line error text."""

from __future__ import annotations

import datetime as dt
import importlib.metadata


def physgen_version() -> str:
    """The installed physgen version, or ``"unknown"`` when running from a bare tree."""
    try:
        return importlib.metadata.version("physgen")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (for one-line errors); for torch's
    ``Error(s) in loading state_dict for X:`` header, the first mismatch below it."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return f"{lines[0]} {lines[1]}"
    return lines[0] if lines else type(err).__name__
