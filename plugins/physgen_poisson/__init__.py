"""physgen's Poisson flow processes, registered as an ordinary physgen plugin."""

from __future__ import annotations

from physgen.registry import ProcessEntry
from physgen.registry.hookspecs import hookimpl


@hookimpl
def physgen_processes() -> list[ProcessEntry]:
    from physgen_poisson.pfgmpp import PFGMPP

    return [
        ProcessEntry(
            "pfgmpp",
            PFGMPP,
            "Poisson flow with D augmented dimensions, PFGM++ (Xu et al. 2023); D=inf is EDM",
        ),
    ]
