"""Small helpers shared by the file writers and readers: versions and git commit, timestamps,
HDF5 attribute decoding, one-line error text."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np


def physgen_version() -> str:
    """The installed physgen version, or ``"unknown"`` when running from a bare tree."""
    try:
        return importlib.metadata.version("physgen")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the git checkout physgen's own source is tracked in, or None (2 s at most);
    recorded as ``git_commit`` in run files."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=2
        )
        if out.returncode != 0:
            raise OSError(out.stderr)
        return out.stdout.strip()

    try:  # tracked, so that an unrelated enclosing repository is not reported
        git("ls-files", "--error-unmatch", Path(__file__).name)
        return git("rev-parse", "HEAD") or None
    except (OSError, subprocess.SubprocessError):
        return None


def decode_attr(value: Any) -> Any:
    """An HDF5 attribute as written: JSON strings (dicts, lists, null) decoded, bytes as
    ``str``, numpy scalars as Python numbers."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and (value[:1] in ("{", "[") or value == "null"):
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


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
