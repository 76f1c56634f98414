"""physgen's built-in samplers, networks, datasets and metrics, as an ordinary plugin.

Registered through the ``physgen`` entry-point group in physgen's own ``pyproject.toml``, by
exactly the code path a third-party package uses. Each area keeps its list beside its code
(``SAMPLERS`` in each solver module, ``NETWORKS`` in :mod:`physgen.nets`, ``DATASETS`` in
:mod:`physgen.data`, ``METRICS`` in :mod:`physgen.metrics`); this module only hands them over.
"""

from __future__ import annotations

from physgen.registry.hookspecs import hookimpl


@hookimpl
def physgen_samplers():
    from physgen.solvers import exponential, flowmap, multistep, ode, sde

    return [
        *ode.SAMPLERS, *multistep.SAMPLERS, *exponential.SAMPLERS, *sde.SAMPLERS,
        *flowmap.SAMPLERS,
    ]  # fmt: skip


@hookimpl
def physgen_networks():
    from physgen.nets import NETWORKS

    return NETWORKS


@hookimpl
def physgen_datasets():
    from physgen.data import DATASETS

    return DATASETS


@hookimpl
def physgen_metrics():
    from physgen.metrics import METRICS

    return METRICS
