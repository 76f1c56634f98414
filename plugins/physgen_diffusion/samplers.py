"""Ancestral sampling and DDIM, written in the σ-frame so that they serve any score view.

Song, Meng, Ermon (2021), "Denoising Diffusion Implicit Models" (DDIM), eq. 12:
``x_{t−1} = sqrt(ᾱ_{t−1}) x̂_0 + sqrt(1 − ᾱ_{t−1} − σ_t²(η)) ε̂ + σ_t(η) z`` with
``σ_t(η) = η sqrt((1 − ᾱ_{t−1})/(1 − ᾱ_t)) sqrt(1 − ᾱ_t/ᾱ_{t−1})`` (eq. 16).
Ho, Jain, Abbeel (2020), "Denoising Diffusion Probabilistic Models" (DDPM), Algorithm 2 and
the posterior ``q(x_{t−1} | x_t, x_0)`` of eqs. 6–7.

Into the σ-frame (math.md §1, §8): divide eq. 12 by ``sqrt(ᾱ_{t−1})`` and write
``x = x_t/sqrt(ᾱ_t)``, ``σ = sqrt((1 − ᾱ)/ᾱ)``, ``x̂_0 = D(x; σ)``, ``ε̂ = (x − D)/σ``. With
``σ_i`` the current level and ``σ_{i+1}`` the next, ``σ_t²(η)/ᾱ_{t−1} = η² σ_{i+1}² (1 −
σ_{i+1}²/σ_i²)``, and eq. 12 becomes the step

    x_{i+1} = D + (σ_down/σ_i) (x_i − D) + σ_up z,
    σ_up = η σ_{i+1} sqrt(1 − σ_{i+1}²/σ_i²),   σ_down = sqrt(σ_{i+1}² − σ_up²),

in which ᾱ no longer appears: it needs only the denoiser and a Gaussian kernel
``x = y + σ n``, so it runs on any process with a ``score`` view (VP, DDPM, VE, EDM, …),
on any decreasing σ-grid.

* η = 0 (DDIM): ``x_{i+1} = x_i + (σ_{i+1} − σ_i)(x_i − D)/σ_i``, the Euler step of the PF-ODE
  ``dx/dσ = (x − D)/σ`` (DDIM eqs. 13–14; EDM §4).
* η = 1 (ancestral): ``σ_down = σ_{i+1}²/σ_i``, so ``x_{i+1} = (σ_{i+1}²/σ_i²) x_i + (1 −
  σ_{i+1}²/σ_i²) D + σ_{i+1} sqrt(1 − σ_{i+1}²/σ_i²) z`` — exactly DDPM's posterior
  ``q(x_{t−1} | x_t, x̂_0)`` (eqs. 6–7) in the σ-frame: its mean ``sqrt(ᾱ_{t−1}) β_t/(1 − ᾱ_t)
  x̂_0 + sqrt(α_t)(1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t`` and variance ``β̃_t`` divided by
  ``sqrt(ᾱ_{t−1})`` give these coefficients, and the same holds between non-adjacent steps
  (``β_t → 1 − ᾱ_t/ᾱ_s``). On consecutive DDPM timesteps this is Algorithm 2 with
  ``σ_t² = β̃_t``; it is also the Gaussian bridge of ``x = y + σ n`` from σ_i down to σ_{i+1}.

A step onto σ = 0 returns ``D(x; σ_i)`` and draws no noise (Algorithm 2 sets z = 0 at t = 1,
where the update is x̂_0). ``grid`` is the float64 σ-grid, decreasing, normally ending at 0.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from physgen.core.rng import Generator, randn_like
from physgen.errors import ConfigError
from physgen.solvers import Sampler

__all__ = ["SAMPLERS", "ancestral", "ddim", "ddim_step"]

Denoiser = Callable[[Tensor, Tensor], Tensor]
OnStep = Callable[[int, Tensor], None]


def ddim_step(
    f: Denoiser,
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    eta: float,
    generator: Generator | None,
) -> Tensor:
    """One DDIM step (eq. 12 in the σ-frame, see the module docstring) from ``sigma`` to
    ``sigma_next`` (0-dim float64). ``x``: ``[B, *event]``. One evaluation of ``f``."""
    denoised = f(x, sigma)
    if sigma_next == 0:
        return denoised
    keep = 1 - (sigma_next / sigma) ** 2  # 1 − σ_{i+1}²/σ_i², float64
    sigma_up = eta * sigma_next * keep.sqrt()  # DDIM eq. 16 over sqrt(ᾱ_{t−1})
    sigma_down = sigma_next * (1 - eta**2 * keep).sqrt()  # sqrt(σ_{i+1}² − σ_up²)
    x = denoised + (sigma_down / sigma).to(x.dtype) * (x - denoised)  # DDIM eq. 12
    if eta != 0:
        x = x + sigma_up.to(x.dtype) * randn_like(x, generator)
    return x


def _check(grid: Tensor, eta: float) -> None:
    if not 0 <= eta <= 1:
        raise ConfigError(f"option eta must lie in [0, 1], got {eta}")
    if grid.ndim != 1 or grid.shape[0] < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ConfigError("ddim/ancestral need a σ-grid of ≥ 2 strictly decreasing values")
    if not bool(grid[-1] >= 0):
        raise ConfigError(f"ddim/ancestral need σ ≥ 0, got {float(grid[-1])}")


def ddim(
    f: Denoiser,
    x: Tensor,
    grid: Tensor,
    *,
    generator: Generator | None = None,
    on_step: OnStep | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) on a σ-grid: η = 0 is the deterministic Euler
    step of the PF-ODE, η = 1 the DDPM ancestral step. ``f`` is ``D(x; σ)``; ``x``
    ``[B, *event]`` at ``grid[0]``. NFE = ``len(grid) − 1``."""
    _check(grid, eta)
    for i in range(grid.shape[0] - 1):
        x = ddim_step(f, x, grid[i], grid[i + 1], eta, generator)
        if on_step is not None:
            on_step(i, x)
    return x


def ancestral(
    f: Denoiser,
    x: Tensor,
    grid: Tensor,
    *,
    generator: Generator | None = None,
    on_step: OnStep | None = None,
) -> Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2 with ``σ_t² = β̃_t``): each step draws
    from the posterior ``q(x_{t−1} | x_t, x̂_0)``, which in the σ-frame is DDIM with η = 1.
    ``f`` is ``D(x; σ)``; ``x`` ``[B, *event]`` at ``grid[0]``. NFE = ``len(grid) − 1``."""
    return ddim(f, x, grid, generator=generator, on_step=on_step, eta=1.0)


def _one_per_interval(grid: Tensor) -> int:
    return grid.shape[0] - 1


SAMPLERS: list[Sampler] = [
    Sampler(
        name="ancestral",
        fn=ancestral,
        view="score",
        description="DDPM ancestral sampling (Ho et al. 2020, Alg. 2) as a σ-frame posterior step",
        order=1,  # weak order
        stochastic=True,
        nfe=_one_per_interval,
    ),
    Sampler(
        name="ddim",
        fn=ddim,
        view="score",
        description="DDIM (Song, Meng & Ermon 2021, eq. 12); eta=0: Euler on the PF-ODE",
        order=1,
        stochastic=False,  # at its default η = 0; η > 0 draws noise from the generator
        nfe=_one_per_interval,
        options={"eta": 0.0},
    ),
]
