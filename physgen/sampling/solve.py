"""Run one registered sampler on given start points, with any field, on a given grid.

The driver (:func:`physgen.sampling.sample`) builds everything from a process and a network.
:func:`solve` is the step below it, as k-diffusion's ``sample_heun(model, x, sigmas)`` is: the
caller brings the start points ``x`` at ``grid[0]``, the grid, and the function to integrate
as one of

* ``denoise(x, sigma)``: a denoiser ``D(x; σ)`` in the σ-frame (EDM, PFGM++, or any
  k-diffusion-style model); ODE samplers integrate its PF-ODE ``dx/dσ = (x − D)/σ`` (Karras
  et al. 2022, "EDM", eq. 3); score samplers assume the Gaussian kernel ``x = y + σ n``;
* ``velocity(x, t)``: a field ``dx/dt`` (flow matching, t from 0 to 1), for ODE samplers;
* ``view``: a process view (:class:`~physgen.core.process.ODEView`,
  :class:`~physgen.core.process.DenoiserView`, …) whose function the sampler needs; with a
  view, ``grid`` may be a number of steps for the view's own grid.

The function is wrapped in a :class:`~physgen.core.process.CountedFn`, so the NFE reported is
counted, never computed. :func:`steps_within` is the inverse of a sampler's declared NFE rule:
the most steps whose grid costs at most a given budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from physgen.core.process import (
    ConsistencyView,
    CountedFn,
    DenoiserView,
    FlowMapView,
    ODEView,
    ScoreView,
    View,
    karras_sigmas,
)
from physgen.core.rng import Generator
from physgen.errors import ConfigError
from physgen.registry import Registry, get_registry
from physgen.solvers import Sampler

__all__ = ["Solution", "solve", "steps_within"]

Field = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Solution:
    """The end points of :func:`solve` and what they cost."""

    #: ``[B, *event]`` states at ``grid[-1]``
    x: Tensor
    #: evaluations of the field (one call on the batch counts once)
    nfe: int
    #: the sampler's name
    sampler: str
    #: the float64 grid integrated on, prior end first
    grid: Tensor


def solve(
    sampler: str | Sampler,
    x: Tensor,
    grid: Tensor | int,
    *,
    denoise: Field | None = None,
    velocity: Field | None = None,
    view: View | None = None,
    generator: Generator | None = None,
    on_step: Callable[[int, Tensor], None] | None = None,
    registry: Registry | None = None,
    **options: Any,
) -> Solution:
    """Integrate from ``x`` (at ``grid[0]``) to ``grid[-1]`` with the registered ``sampler``.

    Exactly one of ``denoise``, ``velocity`` and ``view`` gives the function (see the module
    docstring). ``grid``: float64 times, prior end first (a σ-grid ends at 0), or a number of
    steps for ``view``'s grid. ``generator`` drives stochastic samplers; ``on_step(i, x)`` is
    called after step ``i``; ``options`` are the sampler's keyword options, checked by name.
    No gradient is recorded.
    """
    spec = _spec(sampler, registry)
    pairs = (("denoise", denoise), ("velocity", velocity), ("view", view))
    given = [name for name, value in pairs if value is not None]
    if len(given) != 1:
        raise ConfigError(
            "solve needs exactly one of denoise=, velocity=, view=; "
            f"got {', '.join(given) or 'none'}"
        )
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        known = ", ".join(spec.options) or "none"
        raise ConfigError(f"sampler {spec.name!r} has no option {unknown[0]!r} (options: {known})")
    fn = _function_for(spec, denoise, velocity, view)
    grid = _grid(grid, view)
    counted = CountedFn(fn)
    kwargs: dict[str, Any] = {"generator": generator, **spec.options, **options}
    if on_step is not None:  # not every plugin's sampler takes it
        kwargs["on_step"] = on_step
    with torch.no_grad():
        out = spec.fn(counted, x, grid.to(x.device), **kwargs)
    return Solution(x=out, nfe=counted.nfe, sampler=spec.name, grid=grid)


def steps_within(
    sampler: str | Sampler,
    nfe: int,
    *,
    grid: Callable[[int], Tensor] | None = None,
    registry: Registry | None = None,
    **options: Any,
) -> int:
    """The most steps whose grid ``sampler`` integrates in at most ``nfe`` evaluations, by its
    declared NFE rule with ``options`` (e.g. Heun into σ = 0 spends ``2·steps − 1``: 18 steps
    for 35). ``grid(steps)`` builds the grid the rule is read on (default: EDM's karras grid,
    ending at σ = 0; a grid not ending at 0 costs Heun ``2·steps``)."""
    spec = _spec(sampler, registry)
    if spec.nfe is None:
        raise ConfigError(f"sampler {spec.name!r} has no fixed NFE (adaptive): no step budget")
    if nfe < 1:
        raise ConfigError(f"nfe must be ≥ 1, got {nfe}")
    make = grid or (lambda steps: karras_sigmas(steps, 0.002, 80.0))
    options = {**spec.options, **options}
    best = 0
    # every rule spends ≥ 1 evaluation per step bar a constant (afs, σ = 0), so 2·nfe + 2
    # steps bound the search
    for steps in range(1, 2 * nfe + 3):
        if spec.nfe(make(steps), **options) <= nfe:
            best = steps
    if best == 0:
        raise ConfigError(f"sampler {spec.name!r} needs more than {nfe} evaluations for 1 step")
    return best


def _spec(sampler: str | Sampler, registry: Registry | None) -> Sampler:
    if isinstance(sampler, Sampler):
        return sampler
    spec: Sampler = (registry or get_registry()).sampler(sampler)
    return spec


def _function_for(
    spec: Sampler, denoise: Field | None, velocity: Field | None, view: View | None
) -> Field:
    """The function ``spec``'s view asks for, from what the caller gave."""
    if view is not None:
        if spec.view == "ode" and isinstance(view, DenoiserView):
            return view.as_ode().field
        if spec.view == "ode" and isinstance(view, ODEView):
            return view.field
        if spec.view == "denoiser" and isinstance(view, DenoiserView):
            return view.denoise
        if spec.view == "score" and isinstance(view, ScoreView):
            return view.denoise
        if spec.view == "consistency" and isinstance(view, ConsistencyView):
            return view.f
        if spec.view == "flowmap" and isinstance(view, FlowMapView):
            return view.f  # type: ignore[return-value]  # f(x, t, s): the flowmap sampler's
        raise ConfigError(
            f"sampler {spec.name!r} needs the {spec.view!r} view; got a {type(view).__name__}"
        )
    if denoise is not None:
        if spec.view == "ode":
            return DenoiserView(denoise, _no_grid, _no_prior).as_ode().field
        if spec.view in ("denoiser", "score"):
            return denoise
    if velocity is not None and spec.view == "ode":
        return velocity
    kind = "denoise" if denoise is not None else "velocity"
    raise ConfigError(f"sampler {spec.name!r} ({spec.view} view) cannot run on {kind}=")


def _grid(grid: Tensor | int, view: View | None) -> Tensor:
    if isinstance(grid, int):
        if view is None:
            raise ConfigError("solve: a number of steps as grid needs view=; pass the grid")
        if grid < 1:
            raise ConfigError(f"steps must be ≥ 1, got {grid}")
        if isinstance(view, (ODEView, FlowMapView)):
            return view.grid(grid)
        return view.sigmas(grid)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.ndim != 1 or len(grid) < 2:
        raise ConfigError(f"grid must be 1-D with ≥ 2 points, got shape {list(grid.shape)}")
    return grid


def _no_grid(steps: int) -> Tensor:
    raise ConfigError("solve: the function has no grid of its own")


def _no_prior(*args: Any, **kwargs: Any) -> Tensor:
    raise ConfigError("solve: the function has no prior")
