"""Every hook physgen calls, each documented. Plugins implement them with ``@physgen.hookimpl``.

A plugin is any importable module or object named by an entry point in the ``physgen`` group::

    [project.entry-points.physgen]
    my_process = "my_package.plugin"

physgen's own built-ins are registered exactly this way (see its ``pyproject.toml``).

When the hooks are called. Every hook takes no argument and returns a list of entries. The
registry (:mod:`physgen.registry.manager`) calls each hook of each plugin **once**, when the
process-wide registry is first needed (``physgen plugins``, or the first lookup of a process,
sampler, network, dataset or metric by name), right after importing the plugin. Keep hooks
cheap: import heavy modules inside them, not at the top of the plugin.

What happens on failure (for every hook). A plugin whose import fails, or whose hook raises
(``SystemExit`` and ``KeyboardInterrupt`` included) or returns something other than a list of
the hook's entry type, is recorded as broken with a one-line reason — ``physgen plugins``
shows it — and its other hooks and every other plugin keep working. What a plugin prints goes
to stderr. An entry whose name another plugin also claims is unavailable, with an error naming
both claimants. Later, when physgen *runs* what an entry provides (a process's loss or view, a
sampler, a metric, a factory) and it raises anything other than a
:class:`~physgen.errors.PhysgenError`, the command stops with one line naming the plugin, its
package and what failed (:func:`~physgen.registry.isolation.plugin_call`); a
:class:`~physgen.errors.PhysgenError` (a user error the plugin reports on purpose) is shown as
it is.
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

    Called once at registry load. The classes are instantiated by
    :func:`physgen.get_process` (``validate()`` runs then); their ``loss`` runs in every
    training step and their views in every sampling batch, each guarded: an exception there
    names this plugin and the process.
    """


@hookspec
def physgen_samplers() -> list[Sampler]:
    """Samplers (solver functions with their declared view, order and NFE rule).

    See :mod:`physgen.solvers` for the one signature every sampler function has. Called once
    at registry load; the function (and its NFE rule) run once per batch of
    :func:`physgen.sample`, guarded: an exception names this plugin and the sampler.
    """


@hookspec
def physgen_networks() -> list[NetworkEntry]:
    """Backbones ``F(x, noise_label, class_labels=None)``: a factory
    ``(event_shape, num_classes, **config) -> nn.Module`` per name.

    Called once at registry load; the factory runs in :func:`physgen.get_network`, which then
    checks the module once on a batch of two (eval mode, no gradients): a factory raising
    ``TypeError``/``ValueError`` is a bad option (one-line ConfigError); any other failure, a
    result that is not an ``nn.Module``, or an output not shaped like ``x`` names this plugin.
    """


@hookspec
def physgen_datasets() -> list[DatasetEntry]:
    """Datasets: a loader ``(n, *, seed, **options) -> physgen.data.Dataset`` per name.

    Called once at registry load; the loader runs in :func:`physgen.load_dataset` after its
    options are checked against its signature. A loader that raises (other than a
    PhysgenError) or returns anything but a :class:`physgen.data.Dataset` names this plugin.
    """


@hookspec
def physgen_metrics() -> list[MetricEntry]:
    """Sample-quality metrics: ``(samples, reference, *, generator) -> float`` per name.

    Called once at registry load; the function runs after sampling (``physgen sample``, each
    bench cell), guarded: an exception names this plugin and the metric.
    """


@hookspec
def physgen_couplings() -> list[CouplingEntry]:
    """Couplings of prior and data batches (independent, minibatch OT, …) for processes that
    pair a prior draw with each data point (flow matching, reflow).

    Called once at registry load; the factory runs when a process first builds its coupling
    (guarded: an exception names this plugin and the coupling), the coupling itself inside
    that process's loss.
    """
