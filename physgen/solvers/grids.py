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

References: Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based
Generative Models" (EDM, NeurIPS 2022), eq. 5 and Table 1; Lu, Zhou, Bao, Chen, Li & Zhu,
"DPM-Solver" (NeurIPS 2022), §3.3 and App. D.1 (time-uniform vs logSNR steps); Zhou, Chen,
Zhang, Wang & Zhu, "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps" (CVPR 2024),
§5 (the three schedules compared at low NFE).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from physgen.errors import ConfigError
from physgen.process import convert_value, karras_sigmas

__all__ = ["SCHEDULES", "karras", "logsnr", "regrid", "schedule_defaults", "time_uniform"]


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


#: the named schedules :func:`regrid` (and ``physgen sample --schedule``) know
SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "karras": karras,
    "logsnr": logsnr,
    "time_uniform": time_uniform,
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
    defaults = schedule_defaults(name)
    unknown = set(options) - set(defaults)
    if unknown:
        known = ", ".join(defaults) or "none"
        raise ConfigError(f"schedule {name!r} has no option {sorted(unknown)[0]!r} ({known})")
    owner = f"schedule {name!r}"
    kwargs = {k: convert_value(v, defaults[k], name=k, owner=owner) for k, v in options.items()}
    if grid.ndim != 1 or grid.shape[0] < 2 or not bool((grid[:-1] > grid[1:]).all()):
        raise ConfigError("a schedule replaces a decreasing σ-grid of ≥ 2 values")
    ends_at_zero = bool(grid[-1] == 0)
    levels = grid[:-1] if ends_at_zero else grid
    if not bool((levels > 0).all()):
        raise ConfigError("a schedule replaces a σ-grid of positive levels (then maybe 0)")
    new = SCHEDULES[name](levels.shape[0], float(levels[-1]), float(levels[0]), **kwargs)
    return (new if ends_at_zero else new[:-1]).to(device=grid.device)
