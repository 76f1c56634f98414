"""Multistep exponential-integrator solvers on the ``denoiser`` view.

They integrate the PF-ODE ``dx/dσ = (x − D(x; σ)) / σ`` (EDM frame, math.md §1) in the
half-log-SNR ``λ = −ln σ``, where its linear part is solved exactly and only the denoiser is
approximated, by a polynomial through the denoised values of past steps (one evaluation per
step). ``grid`` is the float64 σ-grid, decreasing, possibly ending in 0.

Reference: Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models" (2022), data-prediction form with α_t = 1, σ_t = σ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from physgen.errors import ConfigError
from physgen.solvers import Sampler

__all__ = ["SAMPLERS", "dpmpp_2m", "exponential_step"]

Denoiser = Callable[[Tensor, Tensor], Tensor]
OnStep = Callable[[int, Tensor], None]


def exponential_step(x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor) -> Tensor:
    """The data-prediction exponential-integrator step with the denoiser held at ``denoised``
    (DPM-Solver++(1), i.e. DDIM): ``x' = (σ'/σ) x − (e^(−h) − 1) D`` with ``e^(−h) = σ'/σ``.
    At σ' = 0 it returns ``denoised`` exactly. ``sigma``, ``sigma_next``: 0-dim float64."""
    ratio = sigma_next / sigma  # e^(−h), float64
    return ratio * x + (1 - ratio) * denoised


def _check_sigmas(grid: Tensor) -> None:
    if grid.ndim != 1 or grid.shape[0] < 2 or not bool((grid[:-1] > 0).all()):
        raise ConfigError("a denoiser grid needs ≥ 2 decreasing σ > 0 (the last may be 0)")


def dpmpp_2m(
    f: Denoiser,
    x: Tensor,
    grid: Tensor,
    *,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), one denoiser call per step.

    With ``λ = −ln σ`` and ``h_i = λ_{i+1} − λ_i``: ``x_{i+1} = (σ_{i+1}/σ_i) x_i −
    (e^(−h_i) − 1) D̃_i``, ``D̃_i = (1 + 1/(2r_i)) D_i − 1/(2r_i) D_{i−1}``, ``r_i = h_{i−1}/h_i``
    (math.md §5). The first step is first order (``D̃_0 = D_0``), and so is a last step into
    σ = 0, which returns the denoised value (as k-diffusion's ``sample_dpmpp_2m``).
    ``f`` is ``D(x; σ)``, ``x`` ``[B, *event]`` at ``grid[0]``.
    """
    _check_sigmas(grid)
    denoised_prev: Tensor | None = None
    h_prev = grid.new_zeros(())
    for i in range(grid.shape[0] - 1):
        sigma, sigma_next = grid[i], grid[i + 1]
        denoised = f(x, sigma)
        if sigma_next == 0:  # h = ∞: the step returns the denoised value
            x = denoised
        else:
            h = torch.log(sigma / sigma_next)
            corrected = denoised
            if denoised_prev is not None:
                half_inv_r = h / (2 * h_prev)  # 1 / (2 r_i), r_i = h_{i−1} / h_i
                corrected = (1 + half_inv_r) * denoised - half_inv_r * denoised_prev
            x = exponential_step(x, sigma, sigma_next, corrected)
            h_prev = h
        denoised_prev = denoised
        if on_step is not None:
            on_step(i, x)
    return x


def _one_per_interval(grid: Tensor) -> int:
    return grid.shape[0] - 1


SAMPLERS: list[Sampler] = [
    Sampler(
        name="dpmpp_2m",
        fn=dpmpp_2m,
        view="denoiser",
        description="DPM-Solver++(2M), 2nd-order multistep in λ = −ln σ (Lu et al. 2022)",
        order=2,
        nfe=_one_per_interval,
    ),
]
