"""physgen's Gaussian diffusion processes, registered as an ordinary physgen plugin.

Processes: EDM, DDPM (discrete), continuous VP and VE — each with ode, denoiser and score views
in the σ-frame. Their samplers ``ancestral`` and ``ddim`` serve any score view and live with the
other solvers (:mod:`physgen.solvers.exponential`).
"""

from __future__ import annotations

from physgen.registry import ProcessEntry
from physgen.registry.hookspecs import hookimpl


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
