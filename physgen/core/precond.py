"""Preconditioning: how a process turns a raw backbone ``F`` into a denoiser.

These are parameterisations, not processes: EDM, PFGM++ and the σ-frame views of VP/VE all
use :func:`edm_denoise` (PFGM++ trains "the same preconditioned denoiser", Xu et al. 2023 §4),
which is why it lives in the core and no plugin imports another.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from physgen.core.process import Backbone, append_dims, as_time
from physgen.core.rng import Generator, randn

__all__ = ["EDMCoefficients", "edm_coefficients", "edm_denoise", "edm_training_sigma"]


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


def edm_denoise(
    net: Backbone,
    x: Tensor,
    sigma: Tensor | float,
    sigma_data: float,
    class_labels: Tensor | None = None,
) -> Tensor:
    """``D(x; σ) = c_skip x + c_out F(c_in x, c_noise)`` (EDM eq. 7). ``x`` ``[B, *event]``,
    ``sigma`` 0-dim or ``[B]``; the network runs in the dtype of ``x``."""
    sigma = as_time(sigma, x)
    c = edm_coefficients(sigma.to(torch.float32) if x.dtype == torch.float16 else sigma, sigma_data)
    n = x.ndim
    out = net(append_dims(c.c_in, n) * x, c.c_noise, class_labels)
    return append_dims(c.c_skip, n) * x + append_dims(c.c_out, n) * out


def edm_training_sigma(
    y: Tensor, P_mean: float, P_std: float, sigma_data: float, generator: Generator | None
) -> tuple[Tensor, Tensor]:
    """EDM's training noise levels for a batch ``y`` ``[B, *event]``: ``ln σ ~ N(P_mean,
    P_std²)`` (EDM §5) and the loss weight ``λ(σ) = (σ² + σ_d²)/(σ σ_d)²`` (EDM Table 1),
    each ``[B]`` in the dtype of ``y``; one normal draw per example from ``generator``."""
    rnd = randn((y.shape[0],), generator=generator, device=y.device, dtype=y.dtype)
    sigma = (rnd * P_std + P_mean).exp()
    return sigma, (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
