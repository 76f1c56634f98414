"""Plugin machinery: the hook specifications (:mod:`physgen.registry.hookspecs`), discovery of
entry points in the ``physgen`` group with each plugin isolated
(:mod:`physgen.registry.manager`), every later call into plugin code guarded
(:mod:`physgen.registry.isolation`), and physgen's own samplers, networks, datasets and
metrics registered as an ordinary plugin (:mod:`physgen.registry.builtin`)."""

from physgen.registry.isolation import isolated, plugin_call, process_view
from physgen.registry.manager import (
    DISABLE_ENV,
    KINDS,
    CouplingEntry,
    DatasetEntry,
    MetricEntry,
    NetworkEntry,
    PluginInfo,
    ProcessEntry,
    Registry,
    get_registry,
)

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
    "isolated",
    "plugin_call",
    "process_view",
]
