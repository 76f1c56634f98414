"""DDPM: discrete-time Gaussian diffusion with T steps, seen in the σ-frame.

Ho, Jain, Abbeel (2020), "Denoising Diffusion Probabilistic Models" (DDPM): forward kernel
``x_t = sqrt(ᾱ_t) y + sqrt(1 − ᾱ_t) ε`` with ``ᾱ_t = ∏_{s ≤ t} (1 − β_s)`` (eq. 4), β linear
from 1e−4 to 0.02 over T = 1000 steps (§4), ε-prediction loss with t uniform (eq. 14).
Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models": the cosine
schedule ``ᾱ_t = f(t)/f(0)``, ``f(t) = cos²((t/T + s)/(1 + s) · π/2)`` (eq. 17), with
``β_t = 1 − ᾱ_t/ᾱ_{t−1}`` clipped at 0.999 and ᾱ recomputed from the clipped β (their §3.2
and code), which keeps ᾱ_T > 0 and so σ_T finite.

Timesteps are ``t = 1..T`` (t = 0 is the data). In the σ-frame (docs/math.md §1) step t is the
noise level ``σ_t = sqrt((1 − ᾱ_t)/ᾱ_t)``; the views share :func:`~physgen_diffusion.vp.vp_denoise`
with the continuous VP. The backbone only ever saw the integers t, so:

* ``sigmas(n)`` hands out σ_t of ``n ≤ t_max`` trained timesteps, evenly spaced and
  **trailing** (Lin, Liu, Li, Yang 2024, "Common Diffusion Noise Schedules and Sample Steps are
  Flawed", Table 2): ``t_i = round(t_max − i t_max/n)``, ``i = 0..n−1``, then σ = 0. ``t_max``
  is the last timestep whose half-log-SNR ``λ_t = −ln σ_t`` is at least ``LAMBDA_MIN = −5.1``
  (σ_t ≤ 164), the clipping DPM-Solver's authors give for the cosine schedule (Lu et al.,
  diffusers ``DPMSolverMultistepScheduler.lambda_min_clipped``): the linear schedule keeps
  t_max = T (σ_T = 157), the cosine one stops at t = 996 instead of σ_T ≈ 2·10⁴. The sampling
  prior ``N(0, (1 + σ²_{t_max}) I)`` is ``x_{t_max} ~ N(0, I)``, exact up to the signal
  ``sqrt(ᾱ) y`` with ``sqrt(ᾱ) ≤ 0.0061``.
* the denoiser maps any σ back to a timestep by **linear interpolation in ln σ** between the
  two neighbouring σ_t (as k-diffusion's ``DiscreteSchedule.sigma_to_t``), clamped to
  [1, T]; on a trained σ_t it returns that integer t exactly. The backbone's noise label is
  ``t − 1`` (0..T−1, the index Ho et al.'s code feeds its network).

Why the cap: ε-prediction divides by ``sqrt(ᾱ_t)``, so an error δ in ε̂ is an error ``σ_t δ`` in
``x̂_0 = D``. At the cosine schedule's σ_T ≈ 2·10⁴ (β_T clipped at 0.999) that is garbage for
every sampler; a 10-step grid also jumped from σ = 2·10⁴ to 6.4 in one step. Ho et al.'s and
Nichol & Dhariwal's code also clip x̂_0 to the data range when sampling images: that is a
sampling choice, ``physgen.sample(..., clip_denoised=c)`` / ``physgen sample --clip-denoised``,
for any process with a denoiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from physgen.core.options import option
from physgen.core.process import (
    Backbone,
    GaussianProcess,
    ScoreView,
    append_dims,
    gaussian_logp,
    gaussian_prior,
)
from physgen.core.rng import randn_like
from physgen.errors import ConfigError
from physgen_diffusion.vp import sigma64, vp_denoise

SCHEDULES = ("linear", "cosine")
#: smallest half-log-SNR ``λ = −ln σ`` a sampling grid starts from (DPM-Solver's clipping for
#: the cosine schedule, ``lambda_min_clipped``): σ ≤ e^5.1 ≈ 164
LAMBDA_MIN = -5.1


def linear_betas(T: int, beta_start: float, beta_end: float) -> Tensor:
    """β_1..β_T linear from ``beta_start`` to ``beta_end`` (Ho et al. 2020, §4). float64."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(T: int, s: float, max_beta: float = 0.999) -> Tensor:
    """β_1..β_T of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), clipped at
    ``max_beta`` to prevent singularities at t = T (their §3.2). float64."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


@dataclass(frozen=True)
class DDPMOptions:
    T: int = option(1000, "number of diffusion steps")
    schedule: str = option(
        "linear", '"linear" (Ho et al. 2020) or "cosine" (Nichol & Dhariwal 2021)'
    )
    beta_start: float = option(1e-4, "β_1 of the linear schedule")
    beta_end: float = option(0.02, "β_T of the linear schedule")
    cosine_s: float = option(0.008, "offset s of the cosine schedule (Nichol & Dhariwal eq. 17)")


class DDPM(GaussianProcess):
    """Discrete-time DDPM, ε-prediction. Views: ode, denoiser, score (σ-frame)."""

    Options = DDPMOptions
    options: DDPMOptions
    #: former options, now sampling options: checkpoints that recorded them still load
    RETIRED_OPTIONS = ("clip_denoised",)

    def __init__(self, options: DDPMOptions | None = None, **overrides: object):
        super().__init__(options, **overrides)
        o = self.options
        if o.schedule == "linear":
            self.betas = linear_betas(o.T, o.beta_start, o.beta_end)
        else:
            self.betas = cosine_betas(o.T, o.cosine_s)
        # Plain float64 CPU tensors derived from the options (not buffers: they are no
        # training state, and Module.to(dtype) must not round them).
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)  # ᾱ_1..ᾱ_T, Ho eq. 4
        self.sigmas_table = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()  # σ_1..σ_T
        # the last timestep with λ_t = −ln σ_t ≥ LAMBDA_MIN: where sampling grids start
        self.t_max = max(1, int((self.sigmas_table <= math.exp(-LAMBDA_MIN)).sum()))

    def validate(self) -> None:
        o = self.options
        if not isinstance(o.T, int) or o.T < 2:
            raise ConfigError(f"ddpm: T must be an integer ≥ 2, got {o.T}")
        if o.schedule not in SCHEDULES:
            raise ConfigError(f"ddpm: schedule must be one of {', '.join(SCHEDULES)}")
        if not 0 < o.beta_start <= o.beta_end < 1:
            raise ConfigError("ddpm: need 0 < beta_start ≤ beta_end < 1")
        if o.cosine_s <= 0:
            raise ConfigError(f"ddpm: cosine_s must be > 0, got {o.cosine_s}")

    # -- timesteps and noise levels --------------------------------------------------------

    def timesteps(self, steps: int) -> Tensor:
        """``steps`` trailing timesteps ``round(t_max − i t_max/steps)``, from ``t_max`` down
        (int64); ``t_max = T`` unless σ_T exceeds e^5.1 (see the module docstring)."""
        t_max = self.t_max
        if not 1 <= steps <= t_max:
            raise ConfigError(
                f"ddpm: steps must lie in [1, {t_max}] (the trained timesteps with "
                f"σ_t ≤ {math.exp(-LAMBDA_MIN):.0f}), got {steps}"
            )
        return torch.linspace(t_max, 0, steps + 1, dtype=torch.float64)[:-1].round().long()

    def sigmas(self, steps: int) -> Tensor:
        """σ_t of :meth:`timesteps` then 0: float64, ``steps + 1`` values, decreasing."""
        sigmas = self.sigmas_table[self.timesteps(steps) - 1]
        return torch.cat([sigmas, sigmas.new_zeros(1)])

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """The (fractional) timestep of σ: linear in ln σ between neighbouring σ_t, clamped to
        [1, T]; exact on the σ_t themselves. ``sigma`` float64 ``[B]`` → float64 ``[B]``."""
        log_table = self.sigmas_table.to(sigma.device).log()
        log_sigma = sigma.log()
        lo = (torch.searchsorted(log_table, log_sigma, right=True) - 1).clamp(0, len(log_table) - 2)
        w = (log_sigma - log_table[lo]) / (log_table[lo + 1] - log_table[lo])
        return (lo + 1 + w).clamp(1, self.options.T)  # index lo holds t = lo + 1

    def noise_label(self, sigma: Tensor) -> Tensor:
        """``t(σ) − 1``: the 0-based timestep Ho et al.'s code feeds its network."""
        return self.t_of_sigma(sigma) - 1

    # -- training ------------------------------------------------------------------------

    def loss(
        self,
        net: Backbone,
        y: Tensor,
        *,
        cond: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        T = self.options.T
        t = torch.randint(1, T + 1, (y.shape[0],), generator=generator, device=y.device)
        alpha_bar = self.alphas_cumprod.to(y.device)[t - 1]
        alpha_bar = append_dims(alpha_bar, y.ndim).to(y.dtype)
        noise = randn_like(y, generator)
        x_t = alpha_bar.sqrt() * y + (1 - alpha_bar).sqrt() * noise  # Ho eq. 4
        eps_hat = net(x_t, (t - 1).to(y.dtype), cond)
        return (noise - eps_hat).pow(2).flatten(1).mean(1)  # Ho eq. 14, per example

    # -- views ---------------------------------------------------------------------------

    def denoiser(self, net: Backbone, cond: Tensor | None = None) -> ScoreView:
        sigma_max = float(self.sigmas_table[self.t_max - 1])
        scale = math.sqrt(1 + sigma_max**2)  # x_{t_max} ~ N(0, I) in the σ-frame

        def denoise(x: Tensor, sigma: Tensor) -> Tensor:
            return vp_denoise(net, x, sigma, self.noise_label(sigma64(sigma, x)), cond)

        return ScoreView(
            denoise=denoise,
            sigmas=self.sigmas,
            prior=gaussian_prior(scale),
            prior_logp=gaussian_logp(scale),
        )
