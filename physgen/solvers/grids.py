"""Named σ-schedules: where a denoiser/score sampler puts its steps.

A schedule is a function ``(steps, sigma_min, sigma_max, **options) -> Tensor`` returning the
float64 σ-grid of ``steps`` decreasing levels from ``sigma_max`` to ``sigma_min`` and then 0
(``steps + 1`` values, ``steps`` intervals: the contract of ``DenoiserView.sigmas``).
:func:`regrid` swaps a view's own grid for a named schedule between that grid's endpoints
(σ_max = its first value, σ_min = its last non-zero value), so a process keeps its range and a
sampler gets the spacing. Options are keyword arguments with defaults (plain values).

* ``karras`` — EDM eq. 5, uniform in ``σ^(1/ρ)``: the polynomial family; ρ → ∞ is ``logsnr``
  and ρ = 1 is uniform in σ.
* ``logsnr`` — uniform in ``λ = −ln σ`` (the half-log-SNR), the grid DPM-Solver recommends for
  high-resolution and guided sampling; exponential integrators take equal λ-steps on it.
* ``time_uniform`` — uniform in the time ``t`` of the VP-SDE with linear β (EDM Table 1, VP:
  ``σ(t) = sqrt(exp(β_d t²/2 + β_min t) − 1)``), DPM-Solver's default for VP models.
* ``knots`` — a stored schedule: the fractions ``u_k`` of the way from ``ln σ_max`` to
  ``ln σ_min`` at ``K`` evenly spaced ramp points, interpolated linearly in between (the
  log-linear interpolation of Align Your Steps); ``K = steps`` gives the stored grid exactly.
  :func:`fit_knots` optimises them for a sampler and budget against a reference, so a fitted
  schedule is a short list of numbers that reproduces it.

References: Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based
Generative Models" (EDM, NeurIPS 2022), eq. 5 and Table 1; Lu, Zhou, Bao, Chen, Li & Zhu,
"DPM-Solver" (NeurIPS 2022), §3.3 and App. D.1 (time-uniform vs logSNR steps); Zhou, Chen,
Zhang, Wang & Zhu, "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps" (CVPR 2024),
§5 (the three schedules compared at low NFE); Sabour, Fidler & Kreis, "Align Your Steps:
Optimizing Sampling Schedules in Diffusion Models" (ICML 2024), §3.3 (interpolating a
schedule to other step counts, log-linearly).
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from physgen.core.options import typed_options
from physgen.core.process import karras_sigmas
from physgen.errors import ConfigError

__all__ = [
    "SCHEDULES",
    "STATISTICS",
    "fit_knots",
    "karras",
    "knots",
    "logsnr",
    "parse_knots",
    "regrid",
    "schedule_defaults",
    "time_uniform",
]


def _check(steps: int, sigma_min: float, sigma_max: float) -> None:
    if steps < 1:
        raise ConfigError(f"steps must be ≥ 1, got {steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ConfigError(f"need 0 < sigma_min ≤ sigma_max, got {sigma_min}, {sigma_max}")


def _levels(ramp_to_sigma: Callable[[Tensor], Tensor], steps: int, lo: float, hi: float) -> Tensor:
    """``steps`` levels at ramp values ``0 … 1`` (``[0]`` for one step), then 0; the ends are
    set to ``hi`` and ``lo`` exactly, whatever the map rounds them to."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = ramp_to_sigma(ramp)
    sigmas[0] = hi
    if steps > 1:
        sigmas[-1] = lo
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras(steps: int, sigma_min: float, sigma_max: float, *, rho: float = 7.0) -> Tensor:
    """EDM eq. 5: ``σ_i = (σ_max^(1/ρ) + i/(n−1) (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ``, then 0."""
    _check(steps, sigma_min, sigma_max)
    if not rho > 0:
        raise ConfigError(f"karras schedule needs rho > 0, got {rho}")
    if steps == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    return karras_sigmas(steps, sigma_min, sigma_max, rho)


def logsnr(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in ``ln σ``: ``σ_i = σ_max (σ_min/σ_max)^(i/(n−1))``, then 0."""
    _check(steps, sigma_min, sigma_max)
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return _levels(lambda r: torch.exp(hi + r * (lo - hi)), steps, sigma_min, sigma_max)


def time_uniform(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    *,
    beta_d: float = 19.9,
    beta_min: float = 0.1,
) -> Tensor:
    """Uniform in the VP time ``t`` between ``t(σ_max)`` and ``t(σ_min)``, mapped through
    ``σ(t) = sqrt(exp(β_d t²/2 + β_min t) − 1)`` (EDM Table 1, VP), then 0."""
    _check(steps, sigma_min, sigma_max)
    if not (beta_d > 0 and beta_min >= 0):
        raise ConfigError(f"time_uniform needs beta_d > 0, beta_min ≥ 0, got {beta_d}, {beta_min}")

    def t_of(sigma: float) -> float:  # EDM Table 1, VP σ^(−1)
        return (math.sqrt(beta_min**2 + 2 * beta_d * math.log1p(sigma**2)) - beta_min) / beta_d

    t_hi, t_lo = t_of(sigma_max), t_of(sigma_min)

    def sigma(r: Tensor) -> Tensor:  # expm1: accurate at small t, where exp(…) − 1 cancels
        t = t_hi + r * (t_lo - t_hi)
        return torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()

    return _levels(sigma, steps, sigma_min, sigma_max)


def parse_knots(knots: str | Sequence[float]) -> list[float]:
    """``knots`` as floats (a comma-separated string or a sequence), checked: ≥ 2 values,
    strictly increasing from 0 to 1."""
    if isinstance(knots, str):
        try:
            values = [float(v) for v in knots.split(",")]
        except ValueError:
            raise ConfigError(f"knots must be comma-separated numbers, got {knots!r}") from None
    else:
        values = [float(v) for v in knots]
    if len(values) < 2 or values[0] != 0 or values[-1] != 1:
        raise ConfigError(f"knots must start at 0 and end at 1, got {values}")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ConfigError(f"knots must increase strictly, got {values}")
    return values


def knots(
    steps: int, sigma_min: float, sigma_max: float, *, knots: str | Sequence[float] = "0,1"
) -> Tensor:
    """``σ = σ_max (σ_min/σ_max)^u(r)`` at ``steps`` ramp values ``r = 0 … 1``, with ``u``
    the piecewise-linear interpolant through ``(k/(K−1), knots[k])`` (Sabour et al. 2024,
    §3.3: log-linear), then 0. ``"0,1"`` is ``logsnr``; ``K = steps`` reproduces the knots."""
    _check(steps, sigma_min, sigma_max)
    u = torch.tensor(parse_knots(knots), dtype=torch.float64)
    lo, hi, segments = math.log(sigma_min), math.log(sigma_max), u.shape[0] - 1

    def sigma(r: Tensor) -> Tensor:
        k = (r * segments).floor().clamp(max=segments - 1).long()
        frac = r * segments - k
        return torch.exp(hi + (u[k] + frac * (u[k + 1] - u[k])) * (lo - hi))

    return _levels(sigma, steps, sigma_min, sigma_max)


#: how :func:`fit_knots` reduces per-sample errors to its loss: the typical draw (``median``)
#: or the tail too (``mean``: a draw sent to the wrong mode counts in proportion; ``rms``: in
#: proportion to its square; ``q90``: the 90th percentile)
STATISTICS: dict[str, Callable[[Tensor], Tensor]] = {
    "median": lambda e: e.median(),
    "mean": lambda e: e.mean(),
    "rms": lambda e: e.pow(2).mean().sqrt(),
    "q90": lambda e: e.quantile(0.9),
}


def fit_knots(
    error: Callable[[Tensor], float | Tensor],
    steps: int,
    sigma_min: float,
    sigma_max: float,
    *,
    n_knots: int = 6,
    init: Sequence[float] | None = None,
    max_evals: int = 400,
    statistic: str = "median",
) -> list[float]:
    """The ``n_knots`` knots (see :func:`knots`) minimising ``error(grid)`` by Nelder–Mead,
    started from ``init`` (``n_knots`` knots; default: ``logsnr``). ``error`` maps a
    :func:`knots` grid of ``steps`` levels to the loss (e.g. a sampler's error against a tight
    reference on pilot draws, never on the draws it is judged on): a number is the loss
    itself; a 1-D tensor of per-sample errors is reduced by ``statistic`` (a key of
    :data:`STATISTICS`; ``median`` fits the typical draw, ``mean``/``rms``/``q90`` weigh the
    draws a coarse grid sends to the wrong mode). The knots are parameterised by
    log-increments (softmax), so every candidate is a valid schedule. Deterministic; returned
    rounded to 6 digits, the values that reproduce the schedule."""
    if n_knots < 2:
        raise ConfigError(f"n_knots must be ≥ 2, got {n_knots}")
    if statistic not in STATISTICS:
        raise ConfigError(f"unknown statistic {statistic!r} (statistics: {', '.join(STATISTICS)})")
    reduce = STATISTICS[statistic]

    def to_knots(a: np.ndarray) -> list[float]:
        w = np.exp(np.concatenate([[0.0], a]))
        u = np.concatenate([[0.0], np.cumsum(w) / w.sum()])
        u[-1] = 1.0
        return [round(float(v), 6) for v in u]

    def loss(a: np.ndarray) -> float:
        try:
            value = error(knots(steps, sigma_min, sigma_max, knots=to_knots(a)))
        except ConfigError:  # two knots rounded together
            return math.inf
        if isinstance(value, Tensor) and value.ndim > 0:
            value = reduce(value.detach().to(torch.float64))
        return float(value)

    if n_knots == 2:
        return [0.0, 1.0]
    start = np.zeros(n_knots - 2)
    if init is not None:
        u = parse_knots(init)
        if len(u) != n_knots:
            raise ConfigError(f"init has {len(u)} knots, n_knots is {n_knots}")
        du = np.diff(u)
        start = np.log(du[1:] / du[0])  # the inverse of to_knots
    simplex = np.vstack([start, start + 0.5 * np.eye(start.size)])  # ±65% increments
    options = {"maxfev": max_evals, "initial_simplex": simplex, "xatol": 1e-3, "fatol": 0.0}
    best = minimize(loss, start, method="Nelder-Mead", options=options)
    return to_knots(best.x if best.fun <= loss(start) else start)


#: the named schedules :func:`regrid` (and ``physgen sample --schedule``) know
SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "karras": karras,
    "logsnr": logsnr,
    "time_uniform": time_uniform,
    "knots": knots,
}


def schedule_defaults(name: str) -> dict[str, Any]:
    """The keyword options of schedule ``name`` with their defaults."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r} (schedules: {', '.join(SCHEDULES)})")
    params = inspect.signature(SCHEDULES[name]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def regrid(grid: Tensor, name: str, **options: Any) -> Tensor:
    """The schedule ``name`` with ``grid``'s number of intervals, between its first value
    (σ_max) and its last non-zero value (σ_min), ending at 0 if ``grid`` does. ``options``
    may be strings (``rho="5"``); they are converted to the option's type. float64, on the
    device of ``grid``."""
    kwargs = typed_options(f"schedule {name!r}", options, schedule_defaults(name))
    if grid.ndim != 1 or grid.shape[0] < 2 or not bool((grid[:-1] > grid[1:]).all()):
        raise ConfigError("a schedule replaces a decreasing σ-grid of ≥ 2 values")
    ends_at_zero = bool(grid[-1] == 0)
    levels = grid[:-1] if ends_at_zero else grid
    if not bool((levels > 0).all()):
        raise ConfigError("a schedule replaces a σ-grid of positive levels (then maybe 0)")
    new = SCHEDULES[name](levels.shape[0], float(levels[-1]), float(levels[0]), **kwargs)
    return (new if ends_at_zero else new[:-1]).to(device=grid.device)
