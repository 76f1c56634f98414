"""Stochastic samplers for the ``score`` view: reverse-SDE Euler–Maruyama, EDM churn, Langevin.

Every function has the solver signature of :mod:`physgen.solvers`::

    fn(f, x, grid, *, generator=None, on_step=None, **options) -> Tensor

with ``f = D(x; σ)`` the denoiser of a Gaussian-perturbation view (``x = y + σ n``), so that
the score is ``∇ log p(x; σ) = (D(x; σ) − x) / σ²``; ``x`` the prior draw ``[B, *event]`` at
``grid[0]``; ``grid`` the float64 σ-grid, decreasing, normally ending at 0. A step that lands on
σ = 0 takes the denoiser's output and adds no noise: there the score is undefined and the
reverse SDE, the PF-ODE and Tweedie's formula all agree on ``x = D(x; σ_i)``. Noise is drawn
only through :func:`physgen.core.rng.randn_like` from ``generator`` (a ``torch.Generator`` or a
:class:`~physgen.core.rng.StackedGenerator`); per-example quantities are computed per example, so a
sample never depends on the batch it is drawn in.

References
----------
* Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole (2021), "Score-Based Generative Modeling
  through Stochastic Differential Equations" (score SDE): eq. 6 (reverse SDE), Alg. 2 (VE
  predictor–corrector), Alg. 4 (VE Langevin corrector, snr step size).
* Karras, Aittala, Aila, Laine (2022), "Elucidating the Design Space of Diffusion-Based
  Generative Models" (EDM): Algorithm 2 (stochastic sampler with churn).
* Song & Ermon (2019), "Generative Modeling by Estimating Gradients of the Data Distribution"
  (NCSN): Algorithm 1 (annealed Langevin dynamics).
* Song & Ermon (2020), "Improved Techniques for Training Score-Based Generative Models"
  (NCSNv2): Technique 4 (choosing the Langevin step size ε).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from physgen.core.process import append_dims
from physgen.core.rng import Generator, randn_like
from physgen.errors import ConfigError
from physgen.solvers import Sampler

__all__ = ["SAMPLERS", "em", "heun_churn", "langevin", "langevin_corrector", "langevin_step", "pc"]

Denoiser = Callable[[Tensor, Tensor], Tensor]
OnStep = Callable[[int, Tensor], None]


# --------------------------------------------------------------------------------------
# Shared steps
# --------------------------------------------------------------------------------------


def _score(f: Denoiser, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Denoised ``D(x; σ)`` and score ``(D − x)/σ²`` (EDM eq. 3), both ``[B, *event]``."""
    denoised = f(x, sigma)
    return denoised, (denoised - x) / sigma.to(x.dtype) ** 2


def langevin_step(x: Tensor, score: Tensor, eps: Tensor, generator: Generator | None) -> Tensor:
    """One unadjusted Langevin step ``x + ε ∇log p(x) + sqrt(2ε) z``.

    ``x``, ``score``: ``[B, *event]``; ``eps``: the step size ε, 0-dim or ``[B]``.
    """
    eps = append_dims(torch.as_tensor(eps, dtype=x.dtype, device=x.device), x.ndim)
    return x + eps * score + (2 * eps).sqrt() * randn_like(x, generator)


def langevin_corrector(
    f: Denoiser,
    x: Tensor,
    sigma: Tensor,
    *,
    snr: float = 0.16,
    snr_norm: str = "batch",
    generator: Generator | None = None,
) -> Tensor:
    """One Langevin corrector step at level ``σ`` with the signal-to-noise step size of score
    SDE Alg. 4: ``ε = 2 (r ||z|| / ||∇log p||)²``. ``x``: ``[B, *event]``; ``sigma``: 0-dim.
    One evaluation of ``f``.

    ``snr_norm="example"`` takes the norms per example (``ε`` is ``[B]``), so a sample does not
    depend on its batch. But then ``ε(x) ∝ 1/||∇log p(x)||²`` varies with ``x``, and Langevin
    with a state-dependent step tends to ``p/ε ∝ p ||∇log p||²``, not ``p`` (for a Gaussian:
    variance × (N + 2)/N); for N ≲ 4 the step is also heavy-tailed (``||z||²/||∇log p||²`` is
    F-distributed) and kicks samples near a mode far out. ``"batch"`` averages the norms over
    the batch as the score SDE reference code does: an ``x``-independent step, right at any N,
    but samples depend on the batch. Measured with pc, 128 steps, on N(μ, s² I): variance
    +9 % ("example") vs +3 % ("batch") in 64-D; in 2-D "example" does not converge.
    """
    _, score = _score(f, x, sigma)
    z = randn_like(x, generator)
    z_norm = z.flatten(1).norm(dim=1)
    g_norm = score.flatten(1).norm(dim=1)
    if snr_norm == "batch":
        z_norm, g_norm = z_norm.mean().expand_as(z_norm), g_norm.mean().expand_as(g_norm)
    g_norm = g_norm.clamp_min(torch.finfo(x.dtype).tiny)
    eps = 2 * (snr * z_norm / g_norm) ** 2  # score SDE Alg. 4, line 4
    return x + append_dims(eps, x.ndim) * score + append_dims((2 * eps).sqrt(), x.ndim) * z


def _reverse_sde_step(
    f: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor, generator: Generator | None
) -> Tensor:
    """Euler–Maruyama step of the VE reverse SDE (score SDE eq. 6, g² = dσ²/dt) from ``σ`` to
    ``σ_next``; onto σ = 0 it returns ``D(x; σ)`` without noise. One evaluation of ``f``."""
    denoised, score = _score(f, x, sigma)
    if sigma_next == 0:
        return denoised
    var = (sigma**2 - sigma_next**2).to(x.dtype)  # σ_i² − σ_{i+1}²: score SDE Alg. 2, line 3
    return x + var * score + var.sqrt() * randn_like(x, generator)


def _churn_gamma(sigma: Tensor, n: int, S_churn: float, S_tmin: float, S_tmax: float) -> float:
    """EDM Algorithm 2, line 4: ``γ = min(S_churn/n, √2 − 1)`` inside [S_tmin, S_tmax], else 0."""
    if S_tmin <= float(sigma) <= S_tmax:
        return min(S_churn / n, math.sqrt(2) - 1)
    return 0.0


def _churn(
    x: Tensor, sigma: Tensor, gamma: float, S_noise: float, generator: Generator | None
) -> tuple[Tensor, Tensor]:
    """EDM Algorithm 2, lines 5–6: raise the noise level to ``σ̂ = σ (1 + γ)`` by adding
    ``sqrt(σ̂² − σ²) S_noise z``. Returns ``(x̂, σ̂)``; draws nothing when ``γ = 0``."""
    if gamma == 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    std = (sigma_hat**2 - sigma**2).sqrt().to(x.dtype)
    return x + std * S_noise * randn_like(x, generator), sigma_hat


def _levels(grid: Tensor) -> tuple[Tensor, bool]:
    """The nonzero noise levels of ``grid`` and whether it ends at σ = 0."""
    to_zero = bool(grid[-1] == 0)
    return (grid[:-1] if to_zero else grid), to_zero


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not (value >= 0 if allow_zero else value > 0):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ConfigError(f"option {name} must be {bound}, got {value}")


# --------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------


def em(
    f: Denoiser,
    x: Tensor,
    grid: Tensor,
    *,
    generator: Generator | None = None,
    on_step: OnStep | None = None,
) -> Tensor:
    """Euler–Maruyama on the VE reverse SDE in the σ-frame (score SDE eq. 6, g² = dσ²/dt):
    ``x_{i+1} = x_i + (σ_i² − σ_{i+1}²) ∇log p(x_i; σ_i) + sqrt(σ_i² − σ_{i+1}²) z``.

    The step onto σ = 0 lands on ``D(x; σ_{n−1})``. Strong order 0.5, weak order 1.
    ``x``: ``[B, *event]`` at ``grid[0]``; NFE = ``len(grid) − 1``.
    """
    for i in range(len(grid) - 1):
        x = _reverse_sde_step(f, x, grid[i], grid[i + 1], generator)
        if on_step is not None:
            on_step(i, x)
    return x


def heun_churn(
    f: Denoiser,
    x: Tensor,
    grid: Tensor,
    *,
    generator: Generator | None = None,
    on_step: OnStep | None = None,
    S_churn: float = 0.0,  # total churn over the grid (EDM Alg. 2); 0: Heun, Algorithm 1
    S_tmin: float = 0.0,  # churn only at σ ≥ S_tmin
    S_tmax: float = math.inf,  # churn only at σ ≤ S_tmax
    S_noise: float = 1.0,  # scale of the churn noise (EDM Alg. 2, line 5)
) -> Tensor:
    """EDM Algorithm 2: churn the noise level up to ``σ̂ = σ (1 + γ)``, then a Heun step of
    ``dx/dσ = (x − D)/σ`` from ``σ̂`` to ``σ_{i+1}`` (Euler on the final step to σ = 0).

    ``S_churn = 0`` is EDM Algorithm 1 (Heun) exactly. NFE = ``2 (len(grid) − 1) − 1`` when the
    grid ends at 0. ``x``: ``[B, *event]`` at ``grid[0]``.
    """
    _positive("S_churn", S_churn, allow_zero=True)
    _positive("S_noise", S_noise, allow_zero=True)
    n = len(grid) - 1
    for i in range(n):
        gamma = _churn_gamma(grid[i], n, S_churn, S_tmin, S_tmax)
        x_hat, sigma_hat = _churn(x, grid[i], gamma, S_noise, generator)
        sigma_next = grid[i + 1]
        h = (sigma_next - sigma_hat).to(x.dtype)
        d = (x_hat - f(x_hat, sigma_hat)) / sigma_hat.to(x.dtype)  # EDM Alg. 2, line 7
        x = x_hat + h * d  # line 8 (Euler)
        if sigma_next != 0:  # lines 9–11: trapezoidal correction
            d_next = (x - f(x, sigma_next)) / sigma_next.to(x.dtype)
            x = x_hat + h * (d + d_next) / 2
        if on_step is not None:
            on_step(i, x)
    return x


def langevin(
    f: Denoiser,
    x: Tensor,
    grid: Tensor,
    *,
    generator: Generator | None = None,
    on_step: OnStep | None = None,
    corrector_steps: int = 10,  # Langevin steps T at each level
    eps: float | None = None,  # step size at σ_L (None: min(2e-5, σ_L²), docstring)
) -> Tensor:
    """Annealed Langevin dynamics (NCSN Algorithm 1) on the nonzero levels of ``grid``.

    At each level σ_i, ``corrector_steps`` (T) steps ``x ← x + (α_i/2) ∇log p(x; σ_i) +
    sqrt(α_i) z`` with ``α_i = eps σ_i² / σ_L²`` (σ_L the smallest nonzero level) — the
    paper's parameterisation; in the notation ``x + ε ∇log p + sqrt(2ε) z`` of docs/math.md §1 the
    step is ``ε_i = α_i / 2``. Stable only for ``eps < 4 σ_L²``: NCSN's σ_L = 0.01 allows
    4e-4, EDM's σ_min = 0.002 only 1.6e-5 (a given ``eps`` beyond it is a
    :class:`ConfigError`).

    The default ``eps = min(2e-5, σ_L²)`` is NCSN's 2e-5 wherever σ_L ≥ 0.0045 (NCSN's grid
    included), and σ_L² on finer grids, where 2e-5 diverges. Song & Ermon (2020), Technique 4,
    pick ε so that T steps carry the variance of level σ_(i−1) to that of σ_i (their ε is half
    this ``eps``): on N(0, σ_i²) a step shrinks deviations by ``1 − eps/(2σ_L²)`` and its
    stationary variance is ``σ_i² / (1 − eps/(4σ_L²))``. At ``eps = σ_L²``, a quarter of the
    bound, T = 10 steps leave (1/2)^10 ≈ 1e-3 of a level's start (for level ratios up to 30),
    at the price of a variance bias of 4/3 on levels far above the data scale, which fades on
    the levels below it. Measured on N(μ, 0.5² I), T = 10, EDM grid 80 → 0.002: variance
    +26 % on 18 levels, +6 % on 64 (``eps = σ_L²/2``: +50 %, +11 %).

    When the grid ends at σ = 0 a final denoising step returns ``D(x; σ_L)`` (one more
    evaluation; NCSN returns the last Langevin iterate, later work denoises it).
    ``on_step(i, x)`` is called after level ``i`` and after the final denoise. NFE =
    ``T × levels (+ 1)``.
    """
    if corrector_steps < 1:
        raise ConfigError(f"option corrector_steps must be ≥ 1, got {corrector_steps}")
    levels, to_zero = _levels(grid)
    sigma_L = levels[-1]
    if eps is None:  # min(NCSN's 2e-5, σ_L²): Song & Ermon 2020, Technique 4 (docstring)
        eps = min(2e-5, float(sigma_L) ** 2)
    _positive("eps", eps)
    # The score of p_σ is at most 1/σ²-Lipschitz (its Hessian is (Cov[y|x] − σ² I)/σ⁴), so a
    # step (α_i/2) with α_i/(2σ_i²) = eps/(2σ_L²) ≥ 2 diverges wherever σ_i dwarfs the data.
    if eps >= 4 * float(sigma_L) ** 2:
        raise ConfigError(
            f"option eps={eps:g} makes annealed Langevin diverge on this grid: "
            f"need eps < 4 σ_L² = {4 * float(sigma_L) ** 2:.3g} (σ_L = {float(sigma_L):.3g})"
        )
    for i, sigma in enumerate(levels):
        alpha = eps * (sigma / sigma_L) ** 2  # NCSN Alg. 1, line 3
        for _ in range(corrector_steps):
            _, score = _score(f, x, sigma)
            x = langevin_step(x, score, alpha / 2, generator)  # NCSN Alg. 1, line 6
        if on_step is not None:
            on_step(i, x)
    if to_zero:
        x = f(x, sigma_L)
        if on_step is not None:
            on_step(len(levels), x)
    return x


def pc(
    f: Denoiser,
    x: Tensor,
    grid: Tensor,
    *,
    generator: Generator | None = None,
    on_step: OnStep | None = None,
    corrector_steps: int = 1,  # Langevin corrector steps after each predictor step
    snr: float = 0.16,  # signal-to-noise ratio r of the corrector step (score SDE Alg. 4)
    snr_norm: str = "batch",  # "batch" or "example" norms in the step size (docstring)
) -> Tensor:
    """Predictor–corrector sampling for the VE SDE (score SDE Alg. 2): a reverse-diffusion
    (Euler–Maruyama) predictor step from σ_i to σ_{i+1}, then ``corrector_steps`` Langevin
    corrector steps at σ_{i+1} with the snr step size (Alg. 4). The step onto σ = 0 denoises
    and is not corrected. NFE = ``n + corrector_steps × (n − 1)`` for ``n`` steps ending at 0.
    ``x``: ``[B, *event]`` at ``grid[0]``. ``snr_norm``: see :func:`langevin_corrector` —
    batch-mean norms by default, as the score SDE reference code (right at any N, but a sample
    depends on its batch); ``"example"`` is batch-independent but biased, unusable for
    N ≲ 4. With a fixed ``snr`` the corrector keeps an O(snr²) bias as the steps shrink, so
    no order is declared.
    """
    if corrector_steps < 0:
        raise ConfigError(f"option corrector_steps must be ≥ 0, got {corrector_steps}")
    _positive("snr", snr)
    if snr_norm not in ("example", "batch"):
        raise ConfigError(f"option snr_norm must be 'example' or 'batch', got {snr_norm!r}")
    for i in range(len(grid) - 1):
        x = _reverse_sde_step(f, x, grid[i], grid[i + 1], generator)  # Alg. 2, lines 3–5
        if grid[i + 1] != 0:
            for _ in range(corrector_steps):  # Alg. 2, lines 6–8
                x = langevin_corrector(
                    f, x, grid[i + 1], snr=snr, snr_norm=snr_norm, generator=generator
                )
        if on_step is not None:
            on_step(i, x)
    return x


# --------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------


def _steps(grid: Tensor) -> tuple[int, int]:
    """``(steps, steps that land on a nonzero σ)`` of a grid."""
    n = len(grid) - 1
    return n, n - int(grid[-1] == 0)


def _nfe_heun_churn(grid: Tensor) -> int:
    n, inner = _steps(grid)
    return n + inner


def _nfe_langevin(grid: Tensor, corrector_steps: int = 10) -> int:
    levels, to_zero = _levels(grid)
    return corrector_steps * len(levels) + int(to_zero)


def _nfe_pc(grid: Tensor, corrector_steps: int = 1) -> int:
    n, inner = _steps(grid)
    return n + corrector_steps * inner


#: the stochastic samplers, registered by :mod:`physgen.registry.builtin`
SAMPLERS: list[Sampler] = [
    Sampler(
        name="em",
        fn=em,
        view="score",
        description="Euler–Maruyama on the reverse VE SDE (Song et al. 2021); weak order 1",
        order=1,  # weak order; strong order 0.5
        stochastic=True,
        nfe=lambda grid: len(grid) - 1,
    ),
    Sampler(
        name="heun_churn",
        fn=heun_churn,
        view="score",
        description="EDM stochastic sampler, Algorithm 2 (Karras et al. 2022): churn + Heun",
        order=1,  # weak order with churn; S_churn = 0 is Heun (order 2)
        stochastic=True,
        nfe=_nfe_heun_churn,
    ),
    Sampler(
        name="langevin",
        fn=langevin,
        view="score",
        description="annealed Langevin dynamics (Song & Ermon 2019, Alg. 1), then denoise",
        order=None,  # MCMC at each level: no order in the step of the grid
        stochastic=True,
        nfe=_nfe_langevin,
    ),
    Sampler(
        name="pc",
        fn=pc,
        view="score",
        description="predictor–corrector: reverse-SDE predictor + Langevin corrector (Song 2021)",
        order=None,  # the snr corrector's bias does not vanish as the steps shrink
        stochastic=True,
        nfe=_nfe_pc,
    ),
]
