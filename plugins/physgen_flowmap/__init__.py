"""physgen's flow-map processes (few-step generation), registered as an ordinary plugin.

``meanflow``: MeanFlow (Geng et al. 2025), the average velocity ``u(x, t, s)`` of the
flow-matching ODE learned from scratch; serves the ``flowmap`` view (sampled by the built-in
``flowmap`` sampler with 1, 2, 4 ... jumps) and the ``ode`` view. See
:mod:`physgen_flowmap.meanflow`.
"""

from __future__ import annotations

from physgen.registry import ProcessEntry
from physgen.registry.hookspecs import hookimpl


@hookimpl
def physgen_processes() -> list[ProcessEntry]:
    from physgen_flowmap.meanflow import MeanFlow

    return [
        ProcessEntry("meanflow", MeanFlow, "MeanFlow average velocity, 1-NFE (Geng et al. 2025)")
    ]
