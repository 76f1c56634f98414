"""EDM: Gaussian diffusion in the σ-frame with EDM preconditioning.

Karras, Aittala, Aila, Laine (2022), "Elucidating the Design Space of Diffusion-Based
Generative Models" (EDM). Perturbation ``x = y + σ n``; denoiser ``D(x; σ) = E[y | x]`` with
Table 1 preconditioning; loss weighted by ``λ(σ) = (σ² + σ_d²)/(σ σ_d)²`` with
``ln σ ~ N(P_mean, P_std²)``; sampling integrates ``dx/dσ = (x − D)/σ`` on the eq. 5 grid.
All but the Gaussian kernel is :class:`~physgen.core.precond.PreconditionedProcess`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from physgen.core.precond import PreconditionedProcess, PrecondOptions
from physgen.core.process import (
    GaussianProcess,
    PriorFn,
    ScoreView,
    append_dims,
    gaussian_logp,
    gaussian_prior,
)
from physgen.core.rng import Generator, randn_like

#: EDM's options are exactly the shared preconditioning options (EDM Table 1, eq. 5)
EDMOptions = PrecondOptions


# view_type = ScoreView: the shared denoiser is the ScoreView GaussianProcess promises
class EDM(PreconditionedProcess, GaussianProcess):  # type: ignore[misc]
    """Gaussian diffusion, EDM parameterisation. Views: ode, denoiser, score."""

    Options = EDMOptions
    view_type = ScoreView

    def perturb(
        self, y: Tensor, sigma: Tensor, generator: Generator | None
    ) -> tuple[Tensor, Tensor]:
        noise = randn_like(y, generator)
        return y + append_dims(sigma, y.ndim) * noise, y  # x = y + σ n (EDM eq. 1 frame)

    def prior_at(self, sigma: float) -> PriorFn:
        return gaussian_prior(sigma)  # N(0, σ_max² I)

    def prior_logp_at(self, sigma: float) -> Callable[[Tensor], Tensor]:
        return gaussian_logp(sigma)
