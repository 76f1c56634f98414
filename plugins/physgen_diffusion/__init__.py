"""physgen's Gaussian diffusion processes, registered as an ordinary physgen plugin.

Processes: EDM, DDPM (discrete), continuous VP and VE — each with ode, denoiser and score views
in the σ-frame. Samplers: ``ancestral`` and ``ddim``, written in the σ-frame over the denoiser,
so they serve every process with a score view (see :mod:`physgen_diffusion.samplers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from physgen.registry import ProcessEntry
from physgen.registry.hookspecs import hookimpl

if TYPE_CHECKING:  # keep plugin loading free of torch until a hook is called
    from physgen.solvers import Sampler


@hookimpl
def physgen_processes() -> list[ProcessEntry]:
    from physgen_diffusion.ddpm import DDPM
    from physgen_diffusion.edm import EDM
    from physgen_diffusion.ve import VE
    from physgen_diffusion.vp import VP

    return [
        ProcessEntry("edm", EDM, "Gaussian diffusion, EDM preconditioning (Karras et al. 2022)"),
        ProcessEntry("ddpm", DDPM, "discrete DDPM, T steps, linear or cosine β (Ho et al. 2020)"),
        ProcessEntry("vp", VP, "continuous VP SDE, β(t) linear 0.1 → 20 (Song et al. 2021)"),
        ProcessEntry("ve", VE, "VE SDE / NCSN, geometric σ (Song et al. 2021)"),
    ]


@hookimpl
def physgen_samplers() -> list[Sampler]:
    from physgen_diffusion.samplers import SAMPLERS

    return SAMPLERS
