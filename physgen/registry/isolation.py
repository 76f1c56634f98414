"""Every call into plugin code, isolated: one broken plugin is named, and the rest keep working.

Two guards, one for each time plugin code runs:

* :class:`LoadGuard` — while an entry point is imported and its hooks are called. Anything the
  plugin raises, ``SystemExit`` (``sys.exit()`` at import) and ``KeyboardInterrupt`` included,
  marks that plugin broken with a one-line reason; only a real Ctrl-C (a SIGINT that arrives
  while the guard is up) still interrupts the command.
* :func:`plugin_call` — while physgen runs what a plugin provides: a process's loss, views and
  prior, a sampler, a metric, a network or dataset factory. An exception that is not a
  :class:`~physgen.errors.PhysgenError` (a user error the plugin reports on purpose) becomes a
  one-line :class:`~physgen.errors.PluginError` naming the plugin, its package and what failed,
  chained to the original (``physgen --debug`` shows its traceback). Out-of-memory errors and
  ``KeyboardInterrupt`` pass through unchanged: they are the machine's and the user's, not the
  plugin's.

Under both guards a plugin's ``print`` goes to stderr, so that ``physgen bench --show-suite >
my.toml`` stays a valid file whatever the plugins print.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from physgen.errors import PhysgenError, PluginError

if TYPE_CHECKING:
    from physgen.registry.manager import PluginInfo

__all__ = ["LoadGuard", "first_line", "isolated", "plugin_call", "process_view"]

F = TypeVar("F", bound=Callable[..., Any])


def first_line(err: BaseException) -> str:
    """``"Type: first line of the message"`` (just the type when there is no message)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


class LoadGuard:
    """Context of a plugin's import or hook call; after it, :attr:`error` holds what the plugin
    raised (None if nothing), and a real Ctrl-C has been re-raised."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self._interrupted = False
        self._previous: Any = None
        self._stdout = contextlib.redirect_stdout(sys.stderr)

    def __enter__(self) -> LoadGuard:
        self._stdout.__enter__()
        # Tell the user's Ctrl-C apart from a plugin raising KeyboardInterrupt: while the guard
        # is up, SIGINT (main thread, default handler only) sets a flag before it interrupts.
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self._interrupted = True
        raise KeyboardInterrupt

    def __exit__(
        self, typ: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        self._stdout.__exit__(typ, err, tb)
        if err is None:
            return False
        if self._interrupted or not isinstance(err, (Exception, SystemExit, KeyboardInterrupt)):
            return False  # the user's Ctrl-C (or GeneratorExit): not the plugin's failure
        self.error = err
        return True


class plugin_call:
    """Context of one call into plugin code; see the module docstring.

    ``owner`` is the :class:`~physgen.registry.PluginInfo` of the plugin, or a
    :class:`~physgen.core.process.Process` instance (its plugin is looked up only if the call
    fails, so the guard costs nothing on the happy path). ``what`` names the call:
    ``"sampler 'heun'"``, or for a process the part of it (``"loss"``, ``"denoiser view"``),
    giving ``plugin 'diffusion' (package physgen): process 'edm' loss failed: <reason>``.
    A process whose class no installed plugin provides is the caller's own code: its errors
    pass through unchanged.
    """

    __slots__ = ("_stdout", "owner", "what")

    def __init__(self, owner: Any, what: str):
        self.owner, self.what = owner, what
        self._stdout = contextlib.redirect_stdout(sys.stderr)

    def __enter__(self) -> plugin_call:
        self._stdout.__enter__()
        return self

    def __exit__(
        self, typ: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        self._stdout.__exit__(typ, err, tb)
        if err is None or isinstance(err, PhysgenError) or _not_the_plugins(err):
            return False
        prefix = self.prefix()
        if prefix is None:
            return False
        raise PluginError(f"{prefix} failed: {first_line(err)}") from err

    def prefix(self) -> str | None:
        """``"plugin 'X' (package P): <what>"``, or None when the owner is no plugin's."""
        info, what = _resolve(self.owner, self.what)
        if info is None:
            return None
        return f"plugin {info.name!r} (package {info.package}): {what}"

    def error(self, message: str) -> PluginError:
        """A PluginError ``"<prefix> <message>"`` for a plugin that returned the wrong thing
        (``raise call.error("returned ndarray, expected physgen.data.Dataset")``)."""
        prefix = self.prefix() or self.what
        return PluginError(f"{prefix} {message}")


def isolated(fn: F, owner: Any, what: str) -> F:
    """``fn`` with every call under :func:`plugin_call` ``(owner, what)``; its signature and
    docstring stay visible (``inspect.signature`` follows ``__wrapped__``)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with plugin_call(owner, what):
            return fn(*args, **kwargs)

    return call  # type: ignore[return-value]


def process_view(process: Any, kind: str, net: Any, cond: Any = None) -> Any:
    """``process.view(kind, net, cond)`` with the call and each function of the returned view
    record (field or denoiser, grid, prior, ...) under :func:`plugin_call`, so that whatever
    runs them — a sampler, the likelihood, a teacher — names the process when one fails."""
    what = f"{kind} view"
    with plugin_call(process, what) as call:
        view = process.view(kind, net, cond)
        if not dataclasses.is_dataclass(view) or isinstance(view, type):
            raise call.error(f"returned {type(view).__name__}, expected a view record")
        funcs = {f.name: getattr(view, f.name) for f in dataclasses.fields(view)}
    guarded = {k: isolated(v, process, what) for k, v in funcs.items() if callable(v)}
    return dataclasses.replace(view, **guarded)


def _not_the_plugins(err: BaseException) -> bool:
    """The user's Ctrl-C, and allocation failures (the machine's, reported elsewhere)."""
    from physgen.errors import allocation_error

    if isinstance(err, (KeyboardInterrupt, MemoryError, GeneratorExit)):
        return True
    # torch's CPU allocator raises RuntimeError ("can't allocate memory"), CUDA OutOfMemoryError
    return allocation_error(err) is not None


def _resolve(owner: Any, what: str) -> tuple[PluginInfo | None, str]:
    from physgen.registry.manager import PluginInfo, get_registry

    if isinstance(owner, PluginInfo):
        return owner, what
    found = get_registry().provider("processes", owner)
    if found is None:
        return None, what
    name, info = found
    return info, f"process {name!r} {what}"
