"""physgen's Gaussian diffusion processes, registered as an ordinary physgen plugin."""

from __future__ import annotations

from physgen.hookspecs import hookimpl
from physgen.registry import ProcessEntry


@hookimpl
def physgen_processes() -> list[ProcessEntry]:
    from physgen_diffusion.edm import EDM

    return [
        ProcessEntry("edm", EDM, "Gaussian diffusion, EDM preconditioning (Karras et al. 2022)"),
    ]
