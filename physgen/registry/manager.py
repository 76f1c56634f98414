"""Plugin discovery: entry points in the ``physgen`` group, each loaded in isolation.

pluggy's ``load_setuptools_entrypoints`` stops at the first plugin that fails to import, and a
hook call (``pm.hook.physgen_processes()``) stops at the first implementation that raises. Here
every entry point is imported on its own, registered with the pluggy plugin manager, and each
of its :class:`pluggy.HookImpl` s is called on its own under a
:class:`~physgen.registry.isolation.LoadGuard`: a broken plugin is recorded with its name,
package and reason, and the rest keep working. Two plugins claiming one name make that name
unavailable, with an error naming both. The callables an entry hands out (a sampler, its NFE
rule, a metric, a coupling factory) are wrapped by :func:`~physgen.registry.isolation.isolated`,
so a failure at run time names the plugin too.

``PHYSGEN_DISABLE_PLUGINS=name1,name2`` skips the named entry points.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from physgen.errors import ConfigError, PluginError
from physgen.registry import hookspecs
from physgen.registry.isolation import LoadGuard, first_line, isolated

if TYPE_CHECKING:
    from physgen.core.process import Process

__all__ = [
    "DISABLE_ENV",
    "KINDS",
    "CouplingEntry",
    "DatasetEntry",
    "MetricEntry",
    "NetworkEntry",
    "PluginInfo",
    "ProcessEntry",
    "Registry",
    "get_registry",
]

#: environment variable naming entry points to skip, comma-separated
DISABLE_ENV = "PHYSGEN_DISABLE_PLUGINS"


@dataclass(frozen=True)
class ProcessEntry:
    """A process a plugin provides: its name, :class:`~physgen.core.process.Process` subclass and
    one-line description."""

    name: str
    cls: type[Process]
    description: str


@dataclass(frozen=True)
class NetworkEntry:
    """A backbone a plugin provides: a factory and its default config."""

    name: str
    #: ``(event_shape, num_classes, **config) -> nn.Module``
    factory: Callable[..., Any]
    description: str
    #: default config (plain values)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset a plugin provides: a loader returning a :class:`~physgen.data.Dataset`."""

    name: str
    #: ``(n, *, seed, **options) -> physgen.data.Dataset``
    loader: Callable[..., Any]
    description: str


@dataclass(frozen=True)
class MetricEntry:
    """A sample-quality metric a plugin provides."""

    name: str
    #: ``(samples, reference, *, generator) -> float``
    fn: Callable[..., float]
    description: str
    lower_is_better: bool = True


@dataclass(frozen=True)
class CouplingEntry:
    """A coupling of prior and data batches a plugin provides (flow matching, reflow)."""

    name: str
    #: ``(**options) -> coupling``; a coupling maps (x0, x1, generator) to re-paired (x0, x1)
    factory: Callable[..., Any]
    description: str


def _sampler_type() -> type:
    from physgen.solvers import Sampler

    return Sampler


#: kind -> (hook name, entry type)
KINDS: dict[str, tuple[str, Callable[[], type]]] = {
    "processes": ("physgen_processes", lambda: ProcessEntry),
    "samplers": ("physgen_samplers", _sampler_type),
    "networks": ("physgen_networks", lambda: NetworkEntry),
    "datasets": ("physgen_datasets", lambda: DatasetEntry),
    "metrics": ("physgen_metrics", lambda: MetricEntry),
    "couplings": ("physgen_couplings", lambda: CouplingEntry),
}


_SINGULAR = {k: k.removesuffix("es") if k == "processes" else k[:-1] for k in KINDS}


@dataclass
class PluginInfo:
    """One plugin as ``physgen plugins`` reports it."""

    name: str
    package: str
    ok: bool = True
    reason: str = ""


@dataclass
class _Claim:
    entry: Any
    plugin: PluginInfo


class _Manager(pluggy.PluginManager):
    """pluggy's manager, also taking an undecorated function named like a hook (as pytest
    takes ``pytest_*``), so a plain module or object with ``physgen_processes`` is a plugin."""

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in _HOOKS and callable(getattr(plugin, name, None)):
            return {}
        return opts


_HOOKS = {hook for hook, _ in KINDS.values()}


class Registry:
    """Everything the installed plugins provide, by kind and name."""

    def __init__(
        self,
        plugins: Iterable[tuple[str, object]] | None = None,
        *,
        entry_points: bool = True,
        disabled: Iterable[str] | None = None,
    ):
        self.pm = _Manager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._entries: dict[str, dict[str, _Claim]] = {kind: {} for kind in KINDS}
        self._conflicts: dict[str, dict[str, list[PluginInfo]]] = {kind: {} for kind in KINDS}
        if disabled is None:
            disabled = [s.strip() for s in os.environ.get(DISABLE_ENV, "").split(",")]
        self.disabled = {d for d in disabled if d}
        if entry_points:
            for ep in md.entry_points(group=hookspecs.PROJECT):
                package = ep.dist.name if ep.dist is not None else ep.value.split(":")[0]
                self._add_entry_point(ep, package)
        for name, obj in plugins or ():
            self._add(name, getattr(obj, "__name__", repr(obj)), obj)

    # -- loading -----------------------------------------------------------------------------

    def _add_entry_point(self, ep: md.EntryPoint, package: str) -> None:
        if ep.name in self.disabled:
            self.plugins.append(PluginInfo(ep.name, package, False, f"disabled by {DISABLE_ENV}"))
            return
        with LoadGuard() as guard:  # any import failure is the plugin's, not ours
            obj = ep.load()
        if guard.error is not None:
            self.plugins.append(PluginInfo(ep.name, package, False, first_line(guard.error)))
            return
        self._add(ep.name, package, obj)

    def _add(self, name: str, package: str, obj: object) -> None:
        info = PluginInfo(name, package)
        self.plugins.append(info)
        try:
            self.pm.register(obj, name=name)
        except Exception as err:  # pluggy's validation: a hook with the wrong arguments
            info.ok, info.reason = False, first_line(err)
            return
        callers = self.pm.get_hookcallers(obj) or []
        for caller in callers:
            if caller.spec is None:  # a @hookimpl that names no physgen hook (a typo)
                self._broken(info, f"{caller.name}: no such hook (hooks: {', '.join(_HOOKS)})")
        for kind, (hook_name, entry_type) in KINDS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is obj:
                    self._call(kind, hook_name, entry_type(), impl, info)

    def _call(
        self, kind: str, hook_name: str, want: type, impl: pluggy.HookImpl, info: PluginInfo
    ) -> None:
        """Call one plugin's implementation of one hook; claim the entries it returns."""
        with LoadGuard() as guard:
            entries: list[Any] = list(impl.function())  # type: ignore[call-overload]
            for e in entries:
                if not isinstance(e, want):
                    raise TypeError(
                        f"{hook_name} returned {type(e).__name__}, expected {want.__name__}"
                    )
        if guard.error is not None:
            self._broken(info, f"{hook_name}: {first_line(guard.error)}")
            return
        for e in entries:
            self._claim(kind, _isolate(kind, e, info), info)

    @staticmethod
    def _broken(info: PluginInfo, reason: str) -> None:
        info.ok = False
        info.reason = f"{info.reason}; {reason}" if info.reason else reason

    def _claim(self, kind: str, entry: Any, plugin: PluginInfo) -> None:
        name = entry.name
        if name in self._conflicts[kind]:
            self._conflicts[kind][name].append(plugin)
        elif name in self._entries[kind]:
            first = self._entries[kind].pop(name)
            self._conflicts[kind][name] = [first.plugin, plugin]
        else:
            self._entries[kind][name] = _Claim(entry, plugin)

    # -- lookup ------------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def items(self, kind: str) -> list[tuple[Any, PluginInfo]]:
        return [(c.entry, c.plugin) for _, c in sorted(self._entries[kind].items())]

    def conflicts(self, kind: str) -> dict[str, list[PluginInfo]]:
        return dict(self._conflicts[kind])

    def get(self, kind: str, name: str) -> Any:
        """The entry ``name`` of ``kind``; a one-line error listing the known names if absent."""
        if kind not in KINDS:
            raise ConfigError(f"unknown plugin kind {kind!r} (kinds: {', '.join(KINDS)})")
        claim = self._entries[kind].get(name)
        if claim is not None:
            return claim.entry
        singular = _SINGULAR[kind]
        if name in self._conflicts[kind]:
            claimants = sorted(self._conflicts[kind][name], key=lambda p: p.name)
            who = " and ".join(f"{p.name} ({p.package})" for p in claimants)
            raise PluginError(f"{singular} {name!r} is claimed by more than one plugin: {who}")
        known = ", ".join(self.names(kind)) or "none installed"
        failed = [f"{p.name} ({p.package}): {p.reason}" for p in self.broken() if p.reason]
        hint = f"; broken plugins: {'; '.join(failed)}" if failed else ""
        raise ConfigError(f"unknown {singular} {name!r} (available: {known}){hint}")

    def plugin_of(self, kind: str, name: str) -> PluginInfo:
        self.get(kind, name)
        return self._entries[kind][name].plugin

    def process(self, name: str) -> ProcessEntry:
        return self.get("processes", name)

    def sampler(self, name: str) -> Any:
        return self.get("samplers", name)

    def network(self, name: str) -> NetworkEntry:
        return self.get("networks", name)

    def dataset(self, name: str) -> DatasetEntry:
        return self.get("datasets", name)

    def metric(self, name: str) -> MetricEntry:
        return self.get("metrics", name)

    def coupling(self, name: str) -> CouplingEntry:
        return self.get("couplings", name)

    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if not p.ok]

    def provider(self, kind: str, obj: Any) -> tuple[str, PluginInfo] | None:
        """``(name, plugin)`` of the registered entry ``obj`` is an instance of (a process by
        its ``registry_name``, else by its class), or None when no plugin provides it."""
        cls = type(obj)
        name = getattr(obj, "registry_name", None)
        claim = self._entries[kind].get(name) if isinstance(name, str) else None
        if claim is not None and getattr(claim.entry, "cls", None) is cls:
            return name, claim.plugin  # type: ignore[return-value]
        for entry_name, c in sorted(self._entries[kind].items()):
            if getattr(c.entry, "cls", None) is cls:
                return entry_name, c.plugin
        return None


#: the callable fields of each kind's entries that run plugin code when physgen calls them
#: (networks and datasets are called, and their results checked, where they are built)
_CALLABLES = {"samplers": ("fn", "nfe"), "metrics": ("fn",), "couplings": ("factory",)}


def _isolate(kind: str, entry: Any, info: PluginInfo) -> Any:
    """``entry`` with each of its plugin callables under :func:`isolated`."""
    what = f"{_SINGULAR[kind]} {entry.name!r}"
    changes = {
        f: isolated(getattr(entry, f), info, what if f != "nfe" else f"{what} NFE rule")
        for f in _CALLABLES.get(kind, ())
        if getattr(entry, f, None) is not None
    }
    return dataclasses.replace(entry, **changes) if changes else entry


_REGISTRY: Registry | None = None


def get_registry(*, reload: bool = False) -> Registry:
    """The process-wide registry of installed plugins, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None or reload:
        _REGISTRY = Registry()
    return _REGISTRY
