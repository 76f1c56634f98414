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


#: rows of a kernel block (memory ``_BLOCK × m``) and points per set behind the median heuristic
_BLOCK = 2048
_MEDIAN_N = 2048


def _kernel_sum(a: Tensor, b: Tensor, bandwidth: float, *, same: bool) -> Tensor:
    """``Σ_ij k(a_i, b_j)`` of the Gaussian kernel in blocks of rows (memory ``O(_BLOCK·m)``,
    never the full matrix); ``same``: ``a is b`` and the diagonal ``k(a_i, a_i)`` is left out."""
    total = a.new_zeros((), dtype=torch.float64)
    for i in range(0, len(a), _BLOCK):
        k = torch.exp(-torch.cdist(a[i : i + _BLOCK], b).pow(2) / (2 * bandwidth**2))
        total += k.sum(dtype=torch.float64)
        if same:
            total -= k[:, i : i + _BLOCK].diagonal().sum(dtype=torch.float64)
    return total


def mmd_rbf(
    x: Tensor,
    y: Tensor,
    *,
    bandwidth: float | None = None,
    generator: torch.Generator | None = None,
    features: Features | None = None,
) -> float:
    """Unbiased squared MMD (MMD²_u, an estimate of a square: can be slightly negative when
    the sets agree) with the Gaussian kernel ``exp(−‖x − y‖² / (2 h²))`` (Gretton et al. 2012,
    eq. 3). ``h`` is the median pairwise distance of the pooled set when not given (median
    heuristic), of the first 2048 points of each set when they are larger. Kernel sums run in
    blocks of rows, so memory grows linearly with the set sizes (time quadratically).
    Deterministic (``generator`` is unused)."""
    x, y = embed(x, y, features)
    if bandwidth is None:
        z = torch.cat([x[:_MEDIAN_N], y[:_MEDIAN_N]])
        i, j = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
        bandwidth = float(torch.cdist(z, z).pow(2)[i, j].median().sqrt())
        if bandwidth == 0.0:
            raise DataError("mmd: the median pairwise distance is 0; give a bandwidth")
    elif bandwidth <= 0:
        raise ConfigError(f"mmd: bandwidth must be > 0, got {bandwidth}")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise DataError(f"mmd: needs at least 2 samples per set, got {n} and {m}")
    sxx = _kernel_sum(x, x, bandwidth, same=True) / (n * (n - 1))
    syy = _kernel_sum(y, y, bandwidth, same=True) / (m * (m - 1))
    sxy = _kernel_sum(x, y, bandwidth, same=False) / (n * m)
    return float(sxx + syy - 2 * sxy)  # Gretton et al. 2012, eq. 3


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
