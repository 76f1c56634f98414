"""Errors physgen raises on purpose.

Every error a user can cause (a bad option, a missing file, a sampler the process cannot serve)
is a :class:`PhysgenError`. The CLI prints such an error as one line and exits non-zero; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class PhysgenError(Exception):
    """A user-facing error: its message is one line that names the problem."""


class ConfigError(PhysgenError, ValueError):
    """An option, name or value the user supplied is invalid."""


class DataError(PhysgenError, ValueError):
    """A data file or array is unreadable or has the wrong shape, dtype or values."""


class CheckpointError(PhysgenError):
    """A checkpoint or run file is missing, truncated, or not a physgen file."""


class PluginError(PhysgenError):
    """A plugin failed to load, or two plugins claim one name."""


class SolverError(PhysgenError, RuntimeError):
    """A solver could not integrate (step size underflow, non-finite state)."""


class TrainingError(PhysgenError, RuntimeError):
    """Training stopped on a non-finite loss or another unrecoverable condition."""


class WriteError(PhysgenError, OSError):
    """An output could not be written (read-only or full file system, no permission); the
    message names the target file, never a temporary name."""
