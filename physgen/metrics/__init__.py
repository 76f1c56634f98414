"""Sample-quality metrics between two sample sets ``[n, *event]`` and ``[m, *event]``.

Each is registered through the ``physgen_metrics`` hook (see :data:`METRICS`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from physgen.registry import MetricEntry

__all__ = ["METRICS", "mmd_rbf", "sliced_w2"]


def _quantiles(v: Tensor, q: Tensor) -> Tensor:
    """Empirical quantile function of each column of ``v`` ``[n, L]`` at levels ``q`` ``[k]``."""
    return torch.quantile(v, q, dim=0)


def sliced_w2(
    x: Tensor, y: Tensor, *, projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced Wasserstein-2 distance (Rabin et al. 2011; Bonneel et al. 2015, eq. 1):
    ``sqrt(E_θ W2²(θᵀx, θᵀy))`` over ``projections`` uniform random directions ``θ``. 1-D W2 is
    the L2 distance between quantile functions; unequal set sizes are compared on a common
    grid of quantile levels. Seeded through ``generator`` (default: seed 0)."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sets have {x.shape[1]} and {y.shape[1]} dims")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    theta = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    px, py = x @ theta, y @ theta
    if px.shape[0] == py.shape[0]:
        diff = px.sort(0).values - py.sort(0).values
    else:
        k = max(px.shape[0], py.shape[0])
        q = (torch.arange(k, dtype=torch.float64, device=x.device) + 0.5) / k
        diff = _quantiles(px, q) - _quantiles(py, q)
    return float(diff.pow(2).mean().sqrt())


def mmd_rbf(x: Tensor, y: Tensor, *, bandwidth: float | None = None) -> float:
    """Squared maximum mean discrepancy with a Gaussian kernel (Gretton et al. 2012, eq. 3,
    unbiased U-statistic); bandwidth from the median pairwise distance of the pooled set when
    not given."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        off = d2[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
        bandwidth = float(off.median().sqrt())
    k = torch.exp(-d2 / (2 * bandwidth**2))
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


METRICS = [
    MetricEntry(
        "sliced_w2",
        lambda x, y, generator=None: sliced_w2(x, y, generator=generator),
        "sliced Wasserstein-2 over 256 random projections (seeded)",
    ),
    MetricEntry(
        "mmd",
        lambda x, y, generator=None: mmd_rbf(x, y),
        "squared MMD, Gaussian kernel, median bandwidth (unbiased)",
    ),
]
