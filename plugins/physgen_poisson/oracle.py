"""The exact PFGM++ denoiser of a finite data set, for tests and benchmarks.

Xu, Liu, Tian, Tong, Tegmark, Jaakkola (2023), "PFGM++": the posterior mean of the data under
the perturbation kernel ``p_r(x | y) ∝ (||x − y||² + r²)^(−(N+D)/2)`` (eq. 4), ``r = σ √D``
(§4). With it, a solver's error against a tight reference is discretisation error alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from physgen.errors import ConfigError
from physgen.testing.oracles import empirical_denoiser, per_example, sq_dists, weighted_mean

__all__ = ["pfgmpp_denoiser"]


def pfgmpp_denoiser(data: Tensor, D: float) -> Callable[[Tensor, Tensor | float], Tensor]:
    """The exact PFGM++ posterior mean of the empirical distribution of ``data``: weights
    ``∝ (||x − y_j||² + r²)^(−(N+D)/2)`` with ``r = σ √D`` (the PFGM++ perturbation kernel
    and its alignment with diffusion, Xu et al. 2023, eq. 4 and §4). ``D = inf`` is the Gaussian
    :func:`~physgen.testing.oracles.empirical_denoiser`; σ = 0 gives weights
    ``∝ ||x − y_j||^(−(N+D))``."""
    if not D > 0:
        raise ConfigError(f"pfgmpp_denoiser needs D > 0, got {D}")
    if math.isinf(D):
        return empirical_denoiser(data)

    def denoise(x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = per_example(sigma, x)
        n = x[0].numel()
        sq = sq_dists(x, data, torch.ones_like(sigma))
        # log of (d² + r²)/(d_min² + r²) via log1p: exact as D → ∞ where it is ~ d²/(σ²D).
        near = sq.amin(1, keepdim=True)
        base = (near + D * sigma[:, None] ** 2).clamp_min(torch.finfo(sq.dtype).tiny)
        log_w = -0.5 * (n + D) * torch.log1p((sq - near) / base)
        return weighted_mean(log_w, data, x)

    return denoise
