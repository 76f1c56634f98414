"""Few-step sampling with a flow map ``f(x, t, s)`` (the ``flowmap`` view): jump along the
grid, ``x ← f(x, t_i, t_{i+1})``, one network evaluation per jump.

With an exact flow map every number of jumps gives the exact ODE solution; a learned one
trades steps for accuracy (MeanFlow, Geng et al. 2025, §4.4: 1-NFE sampling is one jump from
the prior end to the data end).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from physgen.core.rng import Generator
from physgen.solvers import Sampler

__all__ = ["SAMPLERS", "flowmap_jumps"]


def flowmap_jumps(
    f: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    grid: Tensor,
    *,
    generator: Generator | None = None,
    on_step: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """``x ← f(x, grid[i], grid[i + 1])`` for every interval of ``grid`` (prior end first);
    ``len(grid) − 1`` evaluations. Deterministic: ``generator`` is accepted for the common
    sampler signature and unused."""
    for i in range(len(grid) - 1):
        x = f(x, grid[i], grid[i + 1])
        if on_step is not None:
            on_step(i, x)
    return x


#: the flow-map sampler, handed to the ``physgen_samplers`` hook by the builtin plugin
SAMPLERS: list[Sampler] = [
    Sampler(
        name="flowmap",
        fn=flowmap_jumps,
        view="flowmap",
        description="flow-map jumps f(x, t_i, t_i+1), one evaluation per jump (1, 2, 4 ... NFE)",
        nfe=lambda grid: len(grid) - 1,
    ),
]
