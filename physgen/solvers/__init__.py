"""The solver layer: plain functions over a field and a grid.

Every sampler has one signature::

    fn(f, x, grid, *, generator=None, on_step=None, **options) -> Tensor

``f`` is the function of the view the sampler needs (``ode``: the field ``dx/dt``;
``denoiser`` and ``score``: the denoiser ``D(x; σ)``; ``consistency``: ``f(x, σ)``), ``x`` the
prior draw at ``grid[0]``, ``grid`` the float64 times from prior to data (see
:mod:`physgen.core.process` for the conventions). ``on_step(i, x)`` is called after step ``i``.
Solvers know no process; they never count NFE themselves (the driver wraps ``f`` in a
:class:`~physgen.core.process.CountedFn`), and stochastic ones draw noise only from ``generator``.

A :class:`Sampler` record declares what a solver is, as data: the view it needs, its order,
whether it is stochastic, and how many evaluations it spends for a number of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["Sampler"]


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: the solver function and what it is."""

    name: str
    fn: Callable[..., Tensor]
    #: the view it needs: "ode", "denoiser", "score" or "consistency"
    view: str
    #: one-line description shown by ``physgen plugins``
    description: str
    #: declared global order of convergence in the step size (None: adaptive / not a solver)
    order: float | None = None
    #: whether it injects noise (then it needs a generator)
    stochastic: bool = False
    #: ``nfe(grid, **options)``: network evaluations it spends on a grid with the given
    #: options (None: decided at run time, e.g. adaptive)
    nfe: Callable[..., int] | None = None
    #: default keyword options of ``fn`` (plain values), shown by ``physgen plugins``
    options: dict[str, Any] = field(default_factory=dict)
