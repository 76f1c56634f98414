"""Atomic file writes: build at a temporary name beside the target, fsync, rename.

A crash or ``kill -9`` at any moment leaves either the old file or the new one under the final
name, never a half-written one; at worst a stale ``.<name>.<pid>-<hex>.tmp`` file remains
beside it (hidden, and never read as the real file). The next successful write of the same
name removes such temporary files whose writer process is gone.

The published file has the mode any new file gets (``0o666`` less the umask), whatever the
writer used: safetensors, for one, creates its files ``0o600``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from physgen.errors import ConfigError, PhysgenError
from physgen.io.outputs import write_error

__all__ = ["PendingFile", "atomic_path", "atomic_write", "exists_error", "remove_stale"]


class PendingFile:
    """A file being built at a temporary name beside ``path``; :meth:`commit` publishes it.

    The temporary file is created (empty) here, so that the kernel applies the umask to it;
    :meth:`commit` gives the finished file that mode back, whatever the writer did."""

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = True):
        self.path = Path(path)
        self.overwrite = overwrite
        parent = self.path.parent
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"cannot write {self.path}: {parent} is not a directory")
        parent.mkdir(parents=True, exist_ok=True)
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp = self.path.with_name(f".{self.path.name}.{token}.tmp")
        fd = os.open(self.tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        try:  # the umask's mode, read without os.umask() (which sets it for every thread)
            self.mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)

    def commit(self) -> Path:
        try:
            os.chmod(self.tmp, self.mode)
            _fsync_path(self.tmp)
            _publish(self.tmp, self.path, overwrite=self.overwrite)
        except BaseException:
            self.discard()
            raise
        _fsync_dir(self.path.parent)
        remove_stale(self.path)
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.tmp.unlink()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make the rename durable; directories cannot be opened on Windows, so skip there."""
    with contextlib.suppress(OSError):
        _fsync_path(path)


def remove_stale(path: str | os.PathLike[str]) -> None:
    """Delete ``.<name>.<pid>-<hex>.tmp`` files beside ``path`` left by writers that were
    killed: those whose process no longer exists (a live writer's file is kept). Every commit
    does this; call it to clean up before the first write. POSIX only: Windows has no
    harmless ``kill(pid, 0)``."""
    path = Path(path)
    if os.name != "posix":
        return
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*-*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours (EPERM), or no signals here: assume alive
        return True
    return True


def _publish(tmp: Path, path: Path, *, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:  # a hard link creates the name atomically and fails if it exists
        os.link(tmp, path)
    except FileExistsError:
        raise exists_error(path) from None
    except OSError:  # no hard links on this file system: check, then rename
        if path.exists():
            raise exists_error(path) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def exists_error(path: Path) -> ConfigError:
    """The one-line error for a file that must not be overwritten."""
    return ConfigError(f"{path} exists; refusing to overwrite it (pass overwrite=True)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (an empty file); on a clean exit fsync it and
    rename it onto ``path`` with the umask's mode. On any exception the temporary file is
    removed and ``path`` is untouched; a failed write (read-only or full file system) is a
    one-line :class:`~physgen.errors.WriteError` naming ``path``, not the temporary name."""
    try:
        pending = PendingFile(path, overwrite=overwrite)
    except OSError as err:
        raise write_error(path, err) from None
    try:
        yield pending.tmp
    except PhysgenError:
        pending.discard()
        raise
    except OSError as err:
        pending.discard()
        raise write_error(path, err) from None
    except BaseException:
        pending.discard()
        raise
    try:
        pending.commit()
    except PhysgenError:
        raise
    except OSError as err:
        raise write_error(path, err) from None


def atomic_write(
    path: str | os.PathLike[str], writer: Callable[[Path], object], *, overwrite: bool = True
) -> Path:
    """Call ``writer(tmp)`` to write the file at a temporary path (which exists, empty), then
    publish it at ``path`` atomically (see :func:`atomic_path`). Returns ``path``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        writer(tmp)
    return Path(path)
