"""Preconditioning: how a process turns a raw backbone ``F`` into a denoiser.

Karras, Aittala, Aila, Laine (2022), "Elucidating the Design Space of Diffusion-Based Generative
Models" (EDM): ``D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ))`` (eq. 7) with the
coefficients of Table 1. These are parameterisations, not processes: EDM, PFGM++ ("the same
preconditioned denoiser", Xu et al. 2023 §4) and third-party kernels train
:class:`PreconditionedProcess`; consistency models (Song et al. 2023, eq. 5) apply the same
:func:`precondition` with their own coefficients. That is why it lives in the core and no plugin
imports another.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from physgen.core.options import option
from physgen.core.process import (
    Backbone,
    DenoiserView,
    ODEView,
    PriorFn,
    Process,
    append_dims,
    as_time,
    karras_sigmas,
)
from physgen.core.rng import Generator, randn
from physgen.errors import ConfigError

__all__ = [
    "EDMCoefficients",
    "PrecondOptions",
    "PreconditionedProcess",
    "edm_coefficients",
    "edm_denoise",
    "edm_training_sigma",
    "precondition",
]


@dataclass(frozen=True)
class EDMCoefficients:
    """EDM Table 1 (Karras et al. 2022), each ``[B]``."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def edm_coefficients(sigma: Tensor, sigma_data: float) -> EDMCoefficients:
    """``c_skip = σ_d²/(σ²+σ_d²)``, ``c_out = σ σ_d/√(σ²+σ_d²)``, ``c_in = 1/√(σ²+σ_d²)``,
    ``c_noise = ln(σ)/4`` (EDM Table 1, "Ours" column)."""
    total = sigma**2 + sigma_data**2
    return EDMCoefficients(
        c_skip=sigma_data**2 / total,
        c_out=sigma * sigma_data / total.sqrt(),
        c_in=total.rsqrt(),
        c_noise=sigma.log() / 4,
    )


def precondition(
    net: Backbone,
    x: Tensor,
    sigma: Tensor | float,
    coefficients: Callable[[Tensor], EDMCoefficients],
    class_labels: Tensor | None = None,
) -> Tensor:
    """``c_skip x + c_out F(c_in x, c_noise)`` (EDM eq. 7) with the coefficients
    ``coefficients(σ)``. ``x`` ``[B, *event]``, ``sigma`` 0-dim or ``[B]``; the network runs in
    the dtype of ``x`` (σ is kept in float32 under float16, where ln σ would lose digits)."""
    sigma = as_time(sigma, x)
    c = coefficients(sigma.to(torch.float32) if x.dtype == torch.float16 else sigma)
    n = x.ndim
    out = net(append_dims(c.c_in, n) * x, c.c_noise, class_labels)
    return append_dims(c.c_skip, n) * x + append_dims(c.c_out, n) * out


def edm_denoise(
    net: Backbone,
    x: Tensor,
    sigma: Tensor | float,
    sigma_data: float,
    class_labels: Tensor | None = None,
) -> Tensor:
    """``D(x; σ) = c_skip x + c_out F(c_in x, c_noise)`` (EDM eq. 7, Table 1 coefficients)."""
    return precondition(net, x, sigma, lambda s: edm_coefficients(s, sigma_data), class_labels)


def edm_training_sigma(
    y: Tensor, P_mean: float, P_std: float, sigma_data: float, generator: Generator | None
) -> tuple[Tensor, Tensor]:
    """EDM's training noise levels for a batch ``y`` ``[B, *event]``: ``ln σ ~ N(P_mean,
    P_std²)`` (EDM §5) and the loss weight ``λ(σ) = (σ² + σ_d²)/(σ σ_d)²`` (EDM Table 1),
    each ``[B]`` in the dtype of ``y``; one normal draw per example from ``generator``."""
    rnd = randn((y.shape[0],), generator=generator, device=y.device, dtype=y.dtype)
    sigma = (rnd * P_std + P_mean).exp()
    return sigma, (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


@dataclass(frozen=True)
class PrecondOptions:
    """The options every :class:`PreconditionedProcess` shares (EDM Table 1 and eq. 5)."""

    sigma_data: float = option(
        0.5, "σ_d: standard deviation of the data (0.5 for images in [-1, 1])"
    )
    P_mean: float = option(-1.2, "mean of ln σ during training (EDM Table 1)")
    P_std: float = option(1.2, "standard deviation of ln σ during training")
    sigma_min: float = option(0.002, "smallest σ of the sampling grid")
    sigma_max: float = option(80.0, "largest σ of the sampling grid; the prior is drawn there")
    rho: float = option(7.0, "grid curvature ρ of EDM eq. 5")


class PreconditionedProcess(Process):
    """A process trained and sampled as EDM's preconditioned denoiser in the σ-frame; only its
    perturbation kernel ``p_σ(x | y)`` is its own.

    Training (EDM §5, eq. 8): ``ln σ ~ N(P_mean, P_std²)``, ``x`` drawn by :meth:`perturb`, loss
    ``λ(σ) ||D(x; σ) − target||²`` with ``D`` from :func:`edm_denoise`. Sampling: the PF-ODE
    ``dx/dσ = (x − D(x; σ))/σ`` (EDM eq. 3) on the EDM eq. 5 grid, from :meth:`prior_at` at
    ``σ_max``. Subclasses set ``Options`` (a :class:`PrecondOptions` subclass) and implement
    :meth:`perturb`, :meth:`prior_at` and :meth:`prior_logp_at`; views: ode, denoiser.
    """

    Options: ClassVar[type] = PrecondOptions
    options: PrecondOptions
    #: the view record :meth:`denoiser` returns (a Gaussian kernel's denoiser is a ScoreView)
    view_type: ClassVar[type[DenoiserView]] = DenoiserView

    def validate(self) -> None:
        o, name = self.options, type(self).__name__.lower()
        if not (o.sigma_data > 0 and o.P_std > 0 and o.rho > 0):  # also catches NaN
            raise ConfigError(f"{name}: sigma_data, P_std and rho must be positive")
        if not 0 < o.sigma_min < o.sigma_max < math.inf:  # no prior at σ = inf
            raise ConfigError(
                f"{name}: need 0 < sigma_min < sigma_max < inf, got {o.sigma_min}, {o.sigma_max}"
            )

    # -- what a subclass provides: its kernel ----------------------------------------------

    def perturb(
        self, y: Tensor, sigma: Tensor, generator: Generator | None
    ) -> tuple[Tensor, Tensor]:
        """``(x, target)`` for data ``y`` ``[B, *event]`` at per-example ``sigma`` ``[B]``:
        ``x ~ p_σ(· | y)`` and the denoiser's regression target (``y`` for a kernel whose
        denoiser is the posterior mean ``E[y | x]``)."""
        raise NotImplementedError

    def prior_at(self, sigma: float) -> PriorFn:
        """Draws of the kernel at ``sigma`` centred at 0 (the prior at ``σ_max``)."""
        raise NotImplementedError

    def prior_logp_at(self, sigma: float) -> Callable[[Tensor], Tensor] | None:
        """``log p(x)`` ``[B]`` of :meth:`prior_at` (None where unknown)."""
        return None

    # -- shared ------------------------------------------------------------------------------

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
        x, target = self.perturb(y, sigma, generator)
        denoised = edm_denoise(net, x, sigma, o.sigma_data, cond)
        return weight * (denoised - target).pow(2).flatten(1).mean(1)  # EDM eq. 8, per example

    def denoiser(self, net: Backbone, cond: Tensor | None = None) -> DenoiserView:
        o = self.options
        return self.view_type(
            denoise=lambda x, sigma: edm_denoise(net, x, sigma, o.sigma_data, cond),
            sigmas=lambda steps: karras_sigmas(steps, o.sigma_min, o.sigma_max, o.rho),
            prior=self.prior_at(o.sigma_max),
            prior_logp=self.prior_logp_at(o.sigma_max),
        )

    def ode(self, net: Backbone, cond: Tensor | None = None) -> ODEView:
        return self.denoiser(net, cond).as_ode()  # dx/dσ = (x − D)/σ, EDM eq. 3
