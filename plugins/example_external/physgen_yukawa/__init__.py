"""physgen-yukawa: GenPhys's Yukawa generative model as a third-party physgen plugin.

physgen finds this module through the entry point ``yukawa = "physgen_yukawa"`` in the
``physgen`` group (see this package's ``pyproject.toml``) and calls the hooks marked with
``@hookimpl``. Imports of the process module are deferred into the hook, so listing plugins
stays cheap and an error in the process module is reported against this plugin alone.
"""

from __future__ import annotations

from physgen.registry import ProcessEntry
from physgen.registry.hookspecs import hookimpl


@hookimpl
def physgen_processes() -> list[ProcessEntry]:
    from physgen_yukawa.yukawa import Yukawa

    return [
        ProcessEntry(
            "yukawa",
            Yukawa,
            "GenPhys's Yukawa flow with mass m (Liu et al. 2023); m=0 is PFGM, m=inf EDM",
        ),
    ]
