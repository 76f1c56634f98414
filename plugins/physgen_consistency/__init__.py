"""physgen's consistency models, registered as an ordinary physgen plugin.

Processes ``ct``, ``ict`` and ``cd`` (view ``consistency``) and the ``consistency`` sampler
(Song et al. 2023, Algorithm 1: one step with ``steps=1``, multistep otherwise).
"""

from __future__ import annotations

from physgen.registry import ProcessEntry
from physgen.registry.hookspecs import hookimpl
from physgen.solvers import Sampler


@hookimpl
def physgen_processes() -> list[ProcessEntry]:
    from physgen_consistency.ct import CT, ICT
    from physgen_consistency.distillation import CD

    return [
        ProcessEntry("ct", CT, "consistency training from scratch (Song et al. 2023)"),
        ProcessEntry("ict", ICT, "improved consistency training (Song & Dhariwal 2024)"),
        ProcessEntry("cd", CD, "consistency distillation from any denoiser-view teacher"),
    ]


@hookimpl
def physgen_samplers() -> list[Sampler]:
    from physgen_consistency.consistency import consistency_sampling

    return [
        Sampler(
            name="consistency",
            fn=consistency_sampling,
            view="consistency",
            description="consistency sampling, one step or multistep (Song et al. 2023, Alg. 1)",
            stochastic=True,
            nfe=lambda grid: len(grid) - 1,
        ),
    ]
