"""Every hook physgen calls, each documented. Plugins implement them with ``@physgen.hookimpl``.

A plugin is any importable module or object named by an entry point in the ``physgen`` group::

    [project.entry-points.physgen]
    my_process = "my_package.plugin"

physgen's own built-ins are registered exactly this way (see its ``pyproject.toml``). Each
hook returns a list of entries; every entry names itself, and two plugins claiming one name is
an error that names both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from physgen.registry import (
        CouplingEntry,
        DatasetEntry,
        MetricEntry,
        NetworkEntry,
        ProcessEntry,
    )
    from physgen.solvers import Sampler

PROJECT = "physgen"
#: marks the hook specifications below
hookspec = pluggy.HookspecMarker(PROJECT)
#: decorates a plugin's hook implementations: ``@physgen.hookimpl def physgen_processes(): ...``
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def physgen_processes() -> list[ProcessEntry]:
    """Generative processes this plugin provides.

    Each :class:`~physgen.registry.ProcessEntry` names a :class:`~physgen.core.process.Process`
    subclass; its ``Options`` dataclass lists the options ``-o name=value`` accepts.
    """


@hookspec
def physgen_samplers() -> list[Sampler]:
    """Samplers (solver functions with their declared view, order and NFE rule).

    See :mod:`physgen.solvers` for the one signature every sampler function has.
    """


@hookspec
def physgen_networks() -> list[NetworkEntry]:
    """Backbones ``F(x, noise_label, class_labels=None)``: a factory
    ``(event_shape, num_classes, **config) -> nn.Module`` per name."""


@hookspec
def physgen_datasets() -> list[DatasetEntry]:
    """Datasets: a loader ``(n, *, seed, **options) -> physgen.data.Dataset`` per name."""


@hookspec
def physgen_metrics() -> list[MetricEntry]:
    """Sample-quality metrics: ``(samples, reference, *, generator) -> float`` per name."""


@hookspec
def physgen_couplings() -> list[CouplingEntry]:
    """Couplings of prior and data batches (independent, minibatch OT, …) for processes that
    pair a prior draw with each data point (flow matching, reflow)."""
