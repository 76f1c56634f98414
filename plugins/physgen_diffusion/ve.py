"""VE: variance-exploding diffusion (NCSN / score SDE VE), already in the σ-frame.

Song & Ermon (2019), "Generative Modeling by Estimating Gradients of the Data Distribution"
(NCSN): noise levels geometric between σ_min and σ_max, denoising score matching weighted by
``λ(σ) = σ²`` (eqs. 5–6 and §4.2). Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole
(2021), "Score-Based Generative Modeling through Stochastic Differential Equations" (score
SDE): the continuous VE SDE with ``σ(t) = σ_min (σ_max/σ_min)^t`` (§3.4), ``t ~ U[0, 1]`` in
training, prior ``N(0, σ_max² I)``; preconditioning as EDM Table 1, VE column (Karras et al. 2022):
``s_θ(x, σ) = F(x, ln σ)/σ`` (NCSN++ "scale by σ"), i.e. ``D(x; σ) = x + σ F(x, ln σ)``.

``x = y + σ n`` is the σ-frame itself, so the views need no rescaling. Defaults are score_sde's
CIFAR-10 values (σ_min = 0.01, σ_max = 50). For other data set σ_max to about the largest
distance between two training points (Song & Ermon 2020, "Improved Techniques for Training
Score-Based Generative Models", technique 1): e.g. ``-o sigma_max=5`` for the 2-D toy sets,
whose largest pairwise distances are 3.4–4.9.
The noise label is ``ln σ``, what NCSN++ embeds (EDM uses ``ln(σ/2)``, a constant shift).
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class VEOptions:
    sigma_min: float = option(0.01, "smallest σ, the data end of the grid (score SDE, CIFAR-10)")
    sigma_max: float = option(50.0, "largest σ; prior N(0, σ_max² I); ≈ largest data distance")


class VE(GaussianProcess):
    """Variance-exploding diffusion, σ²-weighted score matching. Views: ode, denoiser, score."""

    Options = VEOptions
    options: VEOptions

    def validate(self) -> None:
        o = self.options
        if not 0 < o.sigma_min < o.sigma_max:
            raise ConfigError(
                f"ve: need 0 < sigma_min < sigma_max, got {o.sigma_min}, {o.sigma_max}"
            )

    def sigma(self, t: Tensor) -> Tensor:
        """``σ(t) = σ_min (σ_max/σ_min)^t`` (score SDE §3.4)."""
        o = self.options
        return o.sigma_min * (o.sigma_max / o.sigma_min) ** t

    def sigmas(self, steps: int) -> Tensor:
        """``steps`` geometric levels from σ_max down to σ_min (NCSN §4.2), then 0. float64."""
        if steps < 1:
            raise ConfigError(f"steps must be ≥ 1, got {steps}")
        t = torch.linspace(1, 0, steps, dtype=torch.float64)  # steps = 1: [1.0]
        return torch.cat([self.sigma(t), t.new_zeros(1)])

    def noise_label(self, sigma: Tensor) -> Tensor:
        """``ln σ`` (NCSN++ embeds log σ)."""
        return sigma.log()

    def _scaled_output(
        self, net: Backbone, x: Tensor, sigma: Tensor, cond: Tensor | None
    ) -> Tensor:
        """``σ s_θ(x, σ) = F(x, ln σ)`` (EDM Table 1, VE: c_in = 1, c_out = σ)."""
        return net(x, self.noise_label(sigma), cond)

    def loss(
        self,
        net: Backbone,
        y: Tensor,
        *,
        cond: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        t = torch.rand(y.shape[0], generator=generator, device=y.device, dtype=y.dtype)
        sigma = self.sigma(t)  # ln σ ~ U[ln σ_min, ln σ_max] (score_sde losses.py)
        noise = randn_like(y, generator)
        x = y + append_dims(sigma, y.ndim) * noise
        # λ(σ) ||s_θ − ∇ log p(x | y)||² with λ = σ², ∇ log p(x | y) = −n/σ (NCSN eqs. 5–6):
        # σ² ||F/σ + n/σ||² = ||F + n||².
        return (self._scaled_output(net, x, sigma, cond) + noise).pow(2).flatten(1).mean(1)

    def denoiser(self, net: Backbone, cond: Tensor | None = None) -> ScoreView:
        o = self.options

        def denoise(x: Tensor, sigma: Tensor) -> Tensor:
            sigma = as_time(sigma, x)
            out = self._scaled_output(net, x, sigma, cond)
            return x + append_dims(sigma, x.ndim) * out  # Tweedie: D = x + σ² s_θ

        return ScoreView(
            denoise=denoise,
            sigmas=self.sigmas,
            prior=gaussian_prior(o.sigma_max),
            prior_logp=gaussian_logp(o.sigma_max),
        )
