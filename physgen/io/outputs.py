"""What a command will write, claimed before any work: locked, checked, writable.

Every command names all its outputs up front (:func:`claim_outputs`): the run directory or run
file is locked for the life of the command (``fcntl.flock`` on a hidden ``.<name>.lock``
beside it, holding the owner's pid and command line), every output that already exists is
refused unless overwriting was asked for, and every directory the outputs go to is probed
for writability, so that nothing fails after the work. A second command on the same output
is refused with one line naming the holder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from physgen.errors import ConfigError, WriteError

__all__ = ["check_outputs", "check_writable", "claim_outputs", "lock_output", "write_error"]


def write_error(path: str | os.PathLike[str], err: BaseException) -> WriteError:
    """The one-line error for a failed write of ``path`` (temporary names never shown)."""
    reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0:1]
    if isinstance(reason, list):
        reason = reason[0] if reason else type(err).__name__
    return WriteError(f"cannot write {path}: {reason}")


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:  # as given (relative stays relative in messages)
        if parent.exists():
            return parent
    return Path(".")


def check_writable(path: str | os.PathLike[str]) -> None:
    """Refuse (one line) an output whose directory is not a directory or cannot take a new
    file: probed by creating and removing a hidden file there (permission bits alone miss a
    read-only file system, and root bypasses them)."""
    path = Path(path)
    where = _existing_ancestor(path)
    if not where.is_dir():
        raise WriteError(f"cannot write {path}: {where} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=".physgen-probe-")
    except OSError as err:
        raise write_error(path, err) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _taken(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.exists() or path.is_symlink()


def check_outputs(
    paths: Iterable[str | os.PathLike[str]], *, overwrite: bool, hint: str = "--overwrite"
) -> None:
    """Refuse the first output in ``paths`` that exists (a directory: that is not empty)
    unless ``overwrite``; then probe each one's directory for writability."""
    targets = [Path(p) for p in paths]
    if not overwrite:
        for path in targets:
            if _taken(path):
                raise ConfigError(f"{path} already exists (pass {hint} to replace it)")
    for path in targets:
        check_writable(path)


def _lock_file(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def lock_output(target: str | os.PathLike[str], command: str = "") -> Iterator[None]:
    """Hold an exclusive lock on the output ``target`` (a run directory or file) while the
    block runs; another holder makes this a one-line :class:`ConfigError` naming its pid and
    command. The lock file is removed on release. No-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        yield
        return
    target = Path(target)
    lock = _lock_file(target)
    check_writable(target)  # the lock lives beside it: name the output, not the lock
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(lock, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"{target} is in use by {holder}; wait for it to finish or choose another --out"
            ) from None
        try:  # the holder we waited on may have removed the file: lock the current one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({command or 'physgen'})".encode(errors="replace"))
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


@contextlib.contextmanager
def claim_outputs(
    target: str | os.PathLike[str],
    outputs: Iterable[str | os.PathLike[str]],
    *,
    overwrite: bool,
    command: str = "",
    hint: str = "--overwrite",
) -> Iterator[None]:
    """Lock ``target`` and check every file in ``outputs`` (:func:`check_outputs`) before
    the block runs; the lock is held until it ends."""
    with lock_output(target, command):
        check_outputs(outputs, overwrite=overwrite, hint=hint)
        yield
