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


def allocation_error(err: BaseException) -> PhysgenError | None:
    """A one-line error for a failed memory allocation (a ``MemoryError``, torch's CPU
    allocator or CUDA out of memory) saying how much was asked for; None for anything else."""
    import re

    text = str(err)
    if not isinstance(err, MemoryError) and not re.search(
        r"can't allocate memory|out of memory|Cannot allocate memory", text
    ):
        return None
    match = re.search(r"allocate (\d+) bytes|Tried to allocate ([\d.]+) ([KMGT]i?B)", text)
    if match and match.group(1):
        need = f"needs {int(match.group(1)) / 2**30:.3g} GiB"
    elif match:
        need = f"needs {match.group(2)} {match.group(3)} more"
    else:
        need = "needs more memory than there is"
    return PhysgenError(
        f"out of memory: one allocation {need}; use fewer samples or data points, or a "
        "smaller batch size"
    )


class WriteError(PhysgenError, OSError):
    """An output could not be written (read-only or full file system, no permission); the
    message names the target file, never a temporary name."""
