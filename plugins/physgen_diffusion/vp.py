"""Continuous VP: the variance-preserving SDE, seen in the σ-frame.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole (2021), "Score-Based Generative Modeling
through Stochastic Differential Equations" (score SDE): the VP SDE ``dx = −½ β(t) x dt +
sqrt(β(t)) dw`` (eq. 11) with ``β(t) = β_min + t (β_max − β_min)`` on ``t ∈ [0, 1]``, whose
perturbation kernel is ``x_t = sqrt(ᾱ(t)) y + sqrt(1 − ᾱ(t)) ε``, ``ᾱ(t) = exp(−∫_0^t β)``
(App. B). The σ-frame and the preconditioning are those of Karras et al. (2022), "EDM",
Table 1, VP column.

The σ-frame (docs/math.md §1): ``x̃ = x_t / sqrt(ᾱ) = y + σ ε`` with ``σ = sqrt((1 − ᾱ)/ᾱ)``, so
``ᾱ = 1/(1 + σ²)`` and the network, which predicts ε from the native ``x_t``, sees
``x̃ / sqrt(1 + σ²)``: ``D(x̃; σ) = x̃ − σ ε̂`` (c_skip = 1, c_out = −σ, c_in = 1/sqrt(1 + σ²)).
Views hand out x̃ and σ only; the prior ``x_T ~ N(0, I)`` becomes ``N(0, (1 + σ_max²) I)``.
The noise label is ``999 t``, as score_sde feeds its DDPM++ networks ((M − 1) t in EDM).
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
    as_time,
    gaussian_logp,
    gaussian_prior,
)
from physgen.core.rng import randn_like
from physgen.errors import ConfigError


def sigma64(sigma: Tensor | float, x: Tensor) -> Tensor:
    """σ as a ``[B]`` float64 tensor on the device of ``x``: noise labels are computed in double
    precision (as :mod:`physgen.core.process` keeps time), so grid σ's map back exactly."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma


def vp_denoise(
    net: Backbone, x: Tensor, sigma: Tensor, noise_label: Tensor, cond: Tensor | None = None
) -> Tensor:
    """``D(x̃; σ) = x̃ − σ F(x̃ / sqrt(1 + σ²), c_noise)`` for an ε-predicting backbone ``F``
    (EDM Table 1, VP). ``x`` ``[B, *event]`` in the σ-frame; ``sigma`` 0-dim or ``[B]``;
    ``noise_label`` ``[B]``. Shared by the continuous VP and DDPM."""
    s = append_dims(as_time(sigma, x), x.ndim)
    eps = net((1 + s**2).rsqrt() * x, noise_label.to(x.dtype), cond)
    return x - s * eps


@dataclass(frozen=True)
class VPOptions:
    beta_min: float = option(0.1, "β(0) of the linear schedule (score SDE §3.4)")
    beta_max: float = option(20.0, "β(1)")
    epsilon_s: float = option(1e-3, "smallest t of the sampling grid (EDM Table 1 ε_s)")
    epsilon_t: float = option(1e-5, "smallest t drawn in training (EDM Table 1 ε_t, score_sde eps)")


class VP(GaussianProcess):
    """Continuous-time VP diffusion (score SDE), ε-prediction. Views: ode, denoiser, score."""

    Options = VPOptions
    options: VPOptions

    def validate(self) -> None:
        o = self.options
        if not 0 < o.beta_min < o.beta_max:
            raise ConfigError(f"vp: need 0 < beta_min < beta_max, got {o.beta_min}, {o.beta_max}")
        if not 0 < o.epsilon_t < 1 or not 0 < o.epsilon_s < 1:
            raise ConfigError("vp: epsilon_s and epsilon_t must lie in (0, 1)")

    # -- the schedule (float64 in, float64 out) -------------------------------------------

    def _integral(self, t: Tensor) -> Tensor:
        """``∫_0^t β = β_min t + ½ (β_max − β_min) t²``."""
        o = self.options
        return o.beta_min * t + 0.5 * (o.beta_max - o.beta_min) * t**2

    def alpha_bar(self, t: Tensor) -> Tensor:
        """``ᾱ(t) = exp(−∫_0^t β)`` (score SDE App. B: the squared mean coefficient)."""
        return torch.exp(-self._integral(t))

    def sigma(self, t: Tensor) -> Tensor:
        """``σ(t) = sqrt(1/ᾱ(t) − 1) = sqrt(exp(∫β) − 1)`` (EDM Table 1, VP σ(t))."""
        return torch.expm1(self._integral(t)).sqrt()

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """The inverse of :meth:`sigma`: the root of ``½ β_d t² + β_min t = ln(1 + σ²)``
        (EDM Table 1, VP σ⁻¹), ``β_d = β_max − β_min``."""
        o = self.options
        beta_d = o.beta_max - o.beta_min
        return ((o.beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)).sqrt() - o.beta_min) / beta_d

    def noise_label(self, sigma: Tensor) -> Tensor:
        """``999 t(σ)`` (score_sde's DDPM++ label; EDM Table 1, ``c_noise = (M − 1) t``)."""
        return 999 * self.t_of_sigma(sigma)

    def sigmas(self, steps: int) -> Tensor:
        """``t_i = 1 + i/(n − 1) (ε_s − 1)`` mapped to ``σ(t_i)`` (EDM Table 1, VP), then 0.
        float64, ``steps + 1`` values."""
        if steps < 1:
            raise ConfigError(f"steps must be ≥ 1, got {steps}")
        t = torch.linspace(1, self.options.epsilon_s, steps, dtype=torch.float64)
        return torch.cat([self.sigma(t), t.new_zeros(1)])

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
        eps_t = self.options.epsilon_t
        u = torch.rand(y.shape[0], generator=generator, device=y.device, dtype=torch.float64)
        t = eps_t + (1 - eps_t) * u  # t ~ U[ε_t, 1] (score_sde losses.py)
        alpha_bar = append_dims(self.alpha_bar(t), y.ndim).to(y.dtype)
        noise = randn_like(y, generator)
        x_t = alpha_bar.sqrt() * y + (1 - alpha_bar).sqrt() * noise  # score SDE App. B kernel
        # Denoising score matching with λ(t) = 1 − ᾱ(t) (score SDE eq. 7) is ε-prediction:
        # ||sqrt(1 − ᾱ) s_θ + ε||² = ||ε − ε̂||² (Ho et al. 2020, eq. 14).
        eps_hat = net(x_t, (999 * t).to(y.dtype), cond)
        return (eps_hat - noise).pow(2).flatten(1).mean(1)

    # -- views ---------------------------------------------------------------------------

    def denoiser(self, net: Backbone, cond: Tensor | None = None) -> ScoreView:
        sigma_max = float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))
        scale = math.sqrt(1 + sigma_max**2)  # x_T ~ N(0, I) is x̃ ~ N(0, (1 + σ_max²) I)

        def denoise(x: Tensor, sigma: Tensor) -> Tensor:
            return vp_denoise(net, x, sigma, self.noise_label(sigma64(sigma, x)), cond)

        return ScoreView(
            denoise=denoise,
            sigmas=self.sigmas,
            prior=gaussian_prior(scale),
            prior_logp=gaussian_logp(scale),
        )
