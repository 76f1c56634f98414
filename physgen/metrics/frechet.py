"""Fréchet distance: the squared Wasserstein-2 distance between Gaussian fits of two sets.

References:
    Dowson & Landau 1982, "The Fréchet distance between multivariate normal distributions",
    J. Multivariate Anal. 12 (the closed form).
    Heusel, Ramsauer, Unterthiner, Nessler & Hochreiter 2017, "GANs Trained by a Two
    Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS (eq. 6: FID, the
    same closed form on Inception pool features).
"""

from __future__ import annotations

import torch
from torch import Tensor

from physgen.metrics.features import Features, embed

__all__ = ["fd", "frechet_gaussian", "sqrtm_psd"]


def sqrtm_psd(a: Tensor) -> Tensor:
    """Principal square root of a symmetric positive semi-definite matrix through its
    eigendecomposition ``a = Q diag(λ) Qᵀ``, ``√a = Q diag(√max(λ, 0)) Qᵀ``. ``eigh`` of a
    symmetric matrix is backward stable with real eigenvalues and orthogonal ``Q``; the
    round-off negatives of a rank-deficient ``a`` are clipped to 0."""
    a = (a + a.T) / 2
    lam, q = torch.linalg.eigh(a)
    return (q * lam.clamp(min=0).sqrt()) @ q.T


def frechet_gaussian(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """``‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ2^½ Σ1 Σ2^½)^½)`` (Dowson & Landau 1982; Heusel et al.
    2017, eq. 6), the squared W2 distance between ``N(μ1, Σ1)`` and ``N(μ2, Σ2)``.

    ``tr (Σ1 Σ2)^½`` (eq. 6's form) equals ``tr (Σ2^½ Σ1 Σ2^½)^½``: ``Σ1 Σ2`` is similar to
    that symmetric PSD matrix, so the trace is ``Σ √λ_i`` over the latter's eigenvalues, found
    by ``eigvalsh``. Only symmetric eigenproblems are solved — no ``sqrtm`` of a non-symmetric
    product, whose Schur route returns complex parts and NaNs when the covariances are
    singular (features of fewer samples than dimensions)."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root2 = sqrtm_psd(sigma2)
    middle = root2 @ sigma1 @ root2
    lam = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)
    trace_cross = lam.sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * trace_cross
    return float(value.clamp(min=0))


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``[d]`` and unbiased covariance ``[d, d]`` of ``x`` ``[n, d]``."""
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def fd(
    x: Tensor,
    y: Tensor,
    *,
    generator: torch.Generator | None = None,
    features: Features | None = None,
) -> float:
    """Fréchet distance between the Gaussian fits (mean, unbiased covariance) of two sets in
    the feature space of ``features`` (Heusel et al. 2017, eq. 6; with Inception pool features
    this is FID). Deterministic (``generator`` is unused)."""
    x, y = embed(x, y, features)
    return frechet_gaussian(*_moments(x), *_moments(y))
