"""EDM: Gaussian diffusion in the σ-frame with EDM preconditioning.

Karras, Aittala, Aila, Laine (2022), "Elucidating the Design Space of Diffusion-Based
Generative Models" (EDM). Perturbation ``x = y + σ n``; denoiser ``D(x; σ) = E[y | x]`` with
Table 1 preconditioning; loss weighted by ``λ(σ) = (σ² + σ_d²)/(σ σ_d)²`` with
``ln σ ~ N(P_mean, P_std²)``; sampling integrates ``dx/dσ = (x − D)/σ`` on the eq. 5 grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from physgen.core.precond import edm_denoise, edm_training_sigma
from physgen.core.process import (
    Backbone,
    GaussianProcess,
    ScoreView,
    append_dims,
    gaussian_logp,
    gaussian_prior,
    karras_sigmas,
)
from physgen.core.rng import randn_like
from physgen.errors import ConfigError


@dataclass(frozen=True)
class EDMOptions:
    sigma_data: float = 0.5  # σ_d: standard deviation of the data (0.5 for images in [-1, 1])
    P_mean: float = -1.2  # mean of ln σ during training (EDM Table 1)
    P_std: float = 1.2  # standard deviation of ln σ during training
    sigma_min: float = 0.002  # smallest σ of the sampling grid
    sigma_max: float = 80.0  # largest σ; the prior is N(0, σ_max² I)
    rho: float = 7.0  # grid curvature ρ of EDM eq. 5


class EDM(GaussianProcess):
    """Gaussian diffusion, EDM parameterisation. Views: ode, denoiser, score."""

    Options = EDMOptions
    options: EDMOptions

    def validate(self) -> None:
        o = self.options
        if o.sigma_data <= 0 or o.P_std <= 0 or o.rho <= 0:
            raise ConfigError("edm: sigma_data, P_std and rho must be positive")
        if not 0 < o.sigma_min < o.sigma_max:
            raise ConfigError(
                f"edm: need 0 < sigma_min < sigma_max, got {o.sigma_min}, {o.sigma_max}"
            )

    def loss(
        self,
        net: Backbone,
        y: Tensor,
        *,
        cond: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        o = self.options
        sigma, weight = edm_training_sigma(y, o.P_mean, o.P_std, o.sigma_data, generator)
        noise = randn_like(y, generator)
        x = y + append_dims(sigma, y.ndim) * noise
        denoised = edm_denoise(net, x, sigma, o.sigma_data, cond)
        return weight * (denoised - y).pow(2).flatten(1).mean(1)  # EDM eq. 8, per example

    def denoiser(self, net: Backbone, cond: Tensor | None = None) -> ScoreView:
        o = self.options
        return ScoreView(
            denoise=lambda x, sigma: edm_denoise(net, x, sigma, o.sigma_data, cond),
            sigmas=lambda steps: karras_sigmas(steps, o.sigma_min, o.sigma_max, o.rho),
            prior=gaussian_prior(o.sigma_max),
            prior_logp=gaussian_logp(o.sigma_max),
        )
