"""Optimal-transport distances between two sample sets ``[n, *event]`` and ``[m, *event]``.

References:
    Rabin, Peyré, Delon & Bernot 2011, "Wasserstein Barycenter and its Application to Texture
    Mixing"; Bonneel, Rabin, Peyré & Pfister 2015, "Sliced and Radon Wasserstein Barycenters
    of Measures" (sliced W2).
    Villani 2009, "Optimal Transport: Old and New"; Peyré & Cuturi 2019, "Computational
    Optimal Transport", eq. 2.11 (Kantorovich problem); Flamary et al. 2021, "POT: Python
    Optimal Transport" (``ot.emd2``, network simplex).
"""

from __future__ import annotations

import numpy as np
import ot
import torch
from torch import Tensor

from physgen.errors import ConfigError
from physgen.metrics.features import Features, embed

__all__ = ["W2_MAX_N", "sliced_w2", "w2"]

#: largest set :func:`w2` accepts by default: the cost matrix holds n² float64 (200 MB here)
W2_MAX_N = 5000


def _quantiles(v: Tensor, q: Tensor) -> Tensor:
    """Empirical quantile function of each column of ``v`` ``[n, L]`` at levels ``q`` ``[k]``."""
    return torch.quantile(v, q, dim=0)


def sliced_w2(
    x: Tensor,
    y: Tensor,
    *,
    projections: int = 256,
    generator: torch.Generator | None = None,
    features: Features | None = None,
) -> float:
    """Sliced Wasserstein-2 distance (Rabin et al. 2011; Bonneel et al. 2015, eq. 1):
    ``sqrt(E_θ W2²(θᵀx, θᵀy))`` over ``projections`` uniform random directions ``θ``. 1-D W2 is
    the L2 distance between quantile functions; unequal set sizes are compared on a common
    grid of quantile levels. Seeded through ``generator`` (default: seed 0)."""
    x, y = embed(x, y, features)
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


def w2(
    x: Tensor,
    y: Tensor,
    *,
    max_n: int = W2_MAX_N,
    generator: torch.Generator | None = None,
    features: Features | None = None,
) -> float:
    """Wasserstein-2 distance ``W2 = sqrt(min_π Σ_ij π_ij ‖x_i − y_j‖²)`` between the
    empirical measures of two sets of equal size ``n`` (Peyré & Cuturi 2019, eq. 2.11),
    solved exactly by POT's network simplex. With equal uniform weights an optimal plan is a
    permutation (Birkhoff), so ``W2² = min_σ (1/n) Σ_i ‖x_i − y_σ(i)‖²``. Returned as a
    distance (not squared), in the units of the data like :func:`sliced_w2`. Deterministic
    (``generator`` is unused)."""
    x, y = embed(x, y, features)
    n = x.shape[0]
    if y.shape[0] != n:
        raise ConfigError(f"w2 needs two sets of equal size, got {n} and {y.shape[0]}")
    if n > max_n:
        raise ConfigError(f"w2: {n} samples exceed max_n={max_n} (the cost matrix is n²)")
    cost = torch.cdist(x, y).pow(2).cpu().numpy()  # squared Euclidean ground cost
    weights = np.full(n, 1.0 / n)
    value, log = ot.emd2(weights, weights, cost, numItermax=max(100_000, 50 * n * n), log=True)
    if log["warning"] is not None:
        raise RuntimeError(f"w2: network simplex did not converge: {log['warning']}")
    return float(np.sqrt(max(float(value), 0.0)))
