"""Kernel two-sample distances: MMD² with a Gaussian kernel, and the Kernel Inception Distance.

References:
    Gretton, Borgwardt, Rasch, Schölkopf & Smola 2012, "A Kernel Two-Sample Test", JMLR 13
    (eq. 3: the unbiased MMD²_u; the median heuristic for the Gaussian bandwidth).
    Bińkowski, Sutherland, Arbel & Gretton 2018, "Demystifying MMD GANs", ICLR (KID: the
    unbiased MMD² with the cubic polynomial kernel ``(xᵀy/d + 1)³``, averaged over random
    subsets).
"""

from __future__ import annotations

import torch
from torch import Tensor

from physgen.errors import ConfigError, DataError
from physgen.metrics.features import Features, embed

__all__ = ["kid", "mmd_rbf", "mmd_unbiased"]


def mmd_unbiased(kxx: Tensor, kyy: Tensor, kxy: Tensor) -> Tensor:
    """Unbiased MMD²_u from the three kernel blocks (Gretton et al. 2012, eq. 3): the within-set
    means leave out the diagonal ``k(x_i, x_i)``; the cross term averages all ``n·m`` pairs."""
    n, m = len(kxx), len(kyy)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return sxx + syy - 2 * kxy.mean()


def mmd_rbf(
    x: Tensor,
    y: Tensor,
    *,
    bandwidth: float | None = None,
    generator: torch.Generator | None = None,
    features: Features | None = None,
) -> float:
    """Unbiased squared MMD with the Gaussian kernel ``exp(−‖x − y‖² / (2 h²))`` (Gretton et al.
    2012, eq. 3); ``h`` is the median pairwise distance of the pooled set when not given
    (median heuristic). Can be slightly negative when the sets agree. Deterministic
    (``generator`` is unused)."""
    x, y = embed(x, y, features)
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        i, j = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
        bandwidth = float(d2[i, j].median().sqrt())
        if bandwidth == 0.0:
            raise DataError("mmd: the median pairwise distance is 0; give a bandwidth")
    elif bandwidth <= 0:
        raise ConfigError(f"mmd: bandwidth must be > 0, got {bandwidth}")
    k = torch.exp(-d2 / (2 * bandwidth**2))
    n = len(x)
    return float(mmd_unbiased(k[:n, :n], k[n:, n:], k[:n, n:]))


def kid(
    x: Tensor,
    y: Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
    features: Features | None = None,
) -> float:
    """Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD²_u (Gretton et al.
    2012, eq. 3) with the cubic polynomial kernel ``k(a, b) = (aᵀb/d + 1)³``, ``d`` the
    feature dimension, averaged over ``subsets`` pairs of random subsets of
    ``min(subset_size, n, m)`` samples drawn without replacement from ``generator`` (default:
    seed 0). Each subset estimate is unbiased, so their mean is too. In the feature space of
    ``features`` (Inception pool features for the KID of the paper)."""
    x, y = embed(x, y, features)
    if subsets < 1:
        raise ConfigError(f"kid: subsets must be ≥ 1, got {subsets}")
    size = min(subset_size, len(x), len(y))
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    d = x.shape[1]
    total = x.new_zeros(())
    for _ in range(subsets):
        a = x[torch.randperm(len(x), generator=generator)[:size].to(x.device)]
        b = y[torch.randperm(len(y), generator=generator)[:size].to(y.device)]
        kaa, kbb, kab = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3)
        total += mmd_unbiased(kaa, kbb, kab)
    return float(total / subsets)
