"""The first-order exponential step in the σ-frame, and the samplers made of it alone.

Every first-order sampler over a denoiser takes one and the same step. With the denoiser held
at ``D = D(x_i; σ_i)`` over the step, the PF-ODE ``dx/dσ = (x − D)/σ`` (Karras et al. 2022,
"EDM", eq. 3 with σ(t) = t) is linear in ``x`` and solved exactly:

    x(σ') = (σ'/σ) x + (1 − σ'/σ) D.                                         (*)

This is DDIM with η = 0 (Song, Meng & Ermon 2021, eq. 12 divided by ``sqrt(ᾱ_{t−1})``, with
``x = x_t/sqrt(ᾱ_t)``, ``σ = sqrt((1 − ᾱ)/ᾱ)``; their eqs. 13–14), the first-order
DPM-Solver++ update in data prediction (Lu et al. 2022, "DPM-Solver++", §4.1, with α = 1 and
``e^(−h) = σ'/σ``, ``λ = −ln σ``), and the Euler step of the PF-ODE in σ. The multistep
solvers of :mod:`physgen.solvers.multistep` call :func:`exponential_step` with an extrapolated
``D``; :func:`ddim` and :func:`ancestral` call it with the current one.

**Ancestral steps** split the move from σ to σ' into a deterministic step (*) down to
``σ_down < σ'`` and fresh noise ``σ_up z`` back up to σ' (:func:`ancestral_step`, k-diffusion's
``get_ancestral_step``):

    σ_up = η σ' sqrt(1 − σ'²/σ²),   σ_down = sqrt(σ'² − σ_up²),

which is DDIM's ``σ_t(η)`` (eq. 16) over ``sqrt(ᾱ_{t−1})``. η = 1 gives ``σ_down = σ'²/σ`` and
the step ``x' = (σ'²/σ²) x + (1 − σ'²/σ²) D + σ' sqrt(1 − σ'²/σ²) z`` — exactly DDPM's posterior
``q(x_{t−1} | x_t, x̂_0)`` (Ho, Jain & Abbeel 2020, eqs. 6–7, Algorithm 2 with ``σ_t² = β̃_t``)
in the σ-frame, between adjacent or non-adjacent steps (``β_t → 1 − ᾱ_t/ᾱ_s``); it is also the
Gaussian bridge of ``x = y + σ n`` from σ down to σ'. ᾱ appears nowhere: the samplers need only
the denoiser and a Gaussian kernel, so they serve every process with a ``score`` view (EDM,
DDPM, VP, VE, flow matching with an independent Gaussian coupling) on any decreasing σ-grid.

A step onto σ' = 0 returns ``D`` and draws no noise (the limit of (*); Algorithm 2 sets z = 0
at t = 1, where the update is x̂_0).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from physgen.core.rng import Generator, randn_like
from physgen.errors import ConfigError
from physgen.solvers import Sampler

__all__ = ["SAMPLERS", "ancestral", "ancestral_step", "ddim", "exponential_step"]

Denoiser = Callable[[Tensor, Tensor], Tensor]
OnStep = Callable[[int, Tensor], None]


def exponential_step(x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor) -> Tensor:
    """The step (*) of the module docstring from ``sigma`` to ``sigma_next`` (0-dim float64)
    with the denoiser held at ``denoised``: ``x' = (σ'/σ) x + (1 − σ'/σ) D``, i.e. DDIM η = 0 =
    DPM-Solver++(1) ``x' = (σ'/σ) x − (e^(−h) − 1) D``. At σ' = 0 it returns ``denoised``
    exactly. ``x``, ``denoised``: ``[B, *event]``."""
    ratio = sigma_next / sigma  # e^(−h), float64 (a 0-dim tensor keeps x's dtype)
    return ratio * x + (1 - ratio) * denoised


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(σ_down, σ_up)`` of an ancestral step from ``sigma`` to ``sigma_next`` (module
    docstring; DDIM eq. 16 in the σ-frame): the deterministic step goes to ``σ_down``, the
    noise ``σ_up z`` restores ``σ_down² + σ_up² = σ'²``. η = 0: ``(σ', 0)``. float64."""
    sigma_up = eta * (sigma_next**2 * (1 - (sigma_next / sigma) ** 2)).sqrt()
    return (sigma_next**2 - sigma_up**2).sqrt(), sigma_up


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
    eta: float = 0.0,  # noise of each step: 0 deterministic (PF-ODE), 1 the DDPM posterior
) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) on a σ-grid: the step (*) to ``σ_down``, then
    ``σ_up z`` (module docstring). η = 0 is the deterministic exponential (Euler-in-σ) step of
    the PF-ODE, η = 1 the DDPM ancestral step. ``f`` is ``D(x; σ)``; ``x`` ``[B, *event]`` at
    ``grid[0]``. NFE = ``len(grid) − 1``."""
    _check(grid, eta)
    for i in range(grid.shape[0] - 1):
        sigma, sigma_next = grid[i], grid[i + 1]
        denoised = f(x, sigma)
        if sigma_next == 0:  # the limit of (*): D, and no noise
            x = denoised
        else:
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
            x = exponential_step(x, sigma, sigma_down, denoised)  # DDIM eq. 12, mean
            if eta != 0:
                x = x + sigma_up.to(x.dtype) * randn_like(x, generator)
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
    from the posterior ``q(x_{t−1} | x_t, x̂_0)``, which in the σ-frame is :func:`ddim` with
    η = 1. ``f`` is ``D(x; σ)``; ``x`` ``[B, *event]`` at ``grid[0]``. NFE = ``len(grid) − 1``."""
    return ddim(f, x, grid, generator=generator, on_step=on_step, eta=1.0)


def _one_per_interval(grid: Tensor, **_: object) -> int:
    return grid.shape[0] - 1


#: the exponential-step samplers, registered by :mod:`physgen.registry.builtin`
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
        description="DDIM (Song, Meng & Ermon 2021, eq. 12); eta=0: exponential step of the PF-ODE",
        order=1,
        stochastic=False,  # at its default η = 0; η > 0 draws noise from the generator
        nfe=_one_per_interval,
    ),
]
