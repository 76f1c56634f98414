"""k-nearest-neighbour fidelity and diversity: precision, recall, density, coverage.

Each set stands for its manifold, the union of balls around its points whose radius is the
distance to the point's k-th nearest neighbour in its own set (``NND_k``). ``samples`` are
the generated set, ``reference`` the real one.

References:
    Kynkäänniemi, Karras, Laine, Lehtinen & Aila 2019, "Improved Precision and Recall Metric
    for Assessing Generative Models", NeurIPS (eq. 1: the manifold indicator f; eq. 2:
    precision and recall).
    Naeem, Oh, Uh, Choi & Yoo 2020, "Reliable Fidelity and Diversity Metrics for Generative
    Models", ICML (Sec. 3: density and coverage, balls around the real points only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from physgen.errors import ConfigError
from physgen.metrics.features import Features, embed

__all__ = ["coverage", "density", "knn_radii", "precision", "recall"]

#: rows of a distance matrix held at once
_CHUNK = 2048


def knn_radii(x: Tensor, k: int) -> Tensor:
    """``[n]`` distance from each point of ``x`` ``[n, d]`` to its k-th nearest neighbour in
    ``x``, itself excluded (``NND_k``)."""
    if not 1 <= k < len(x):
        raise ConfigError(f"k must be in [1, {len(x) - 1}] for a set of {len(x)}, got {k}")
    parts = [torch.cdist(c, x).kthvalue(k + 1, dim=1).values for c in x.split(_CHUNK)]
    return torch.cat(parts)  # the (k+1)-th smallest: the first is the point itself, at 0


def _ball_counts(points: Tensor, centers: Tensor, radii: Tensor) -> tuple[Tensor, Tensor]:
    """For ``1[‖p_j − c_i‖ ≤ r_i]``: the number of balls holding each point ``[m]`` and the
    number of points in each ball ``[n]``."""
    per_point, per_center = [], torch.zeros(len(centers), dtype=torch.long, device=points.device)
    for chunk in points.split(_CHUNK):
        inside = torch.cdist(chunk, centers) <= radii
        per_point.append(inside.sum(1))
        per_center += inside.sum(0)
    return torch.cat(per_point), per_center


def precision(
    x: Tensor,
    y: Tensor,
    *,
    k: int = 3,
    generator: torch.Generator | None = None,
    features: Features | None = None,
) -> float:
    """Fraction of samples ``x`` inside the reference manifold of ``y`` (Kynkäänniemi et al.
    2019, eq. 2 with f of eq. 1). Deterministic (``generator`` is unused)."""
    x, y = embed(x, y, features)
    per_point, _ = _ball_counts(x, y, knn_radii(y, k))
    return float((per_point > 0).double().mean())


def recall(
    x: Tensor,
    y: Tensor,
    *,
    k: int = 3,
    generator: torch.Generator | None = None,
    features: Features | None = None,
) -> float:
    """Fraction of reference points ``y`` inside the sample manifold of ``x`` (Kynkäänniemi
    et al. 2019, eq. 2 with f of eq. 1). Deterministic (``generator`` is unused)."""
    x, y = embed(x, y, features)
    per_point, _ = _ball_counts(y, x, knn_radii(x, k))
    return float((per_point > 0).double().mean())


def density(
    x: Tensor,
    y: Tensor,
    *,
    k: int = 5,
    generator: torch.Generator | None = None,
    features: Features | None = None,
) -> float:
    """``1/(k M) Σ_j Σ_i 1[x_j ∈ B(y_i, NND_k(y_i))]`` (Naeem et al. 2020, Sec. 3): how many
    reference balls hold a sample, on average, over ``k``; about 1 when the sets agree,
    unbounded above. Deterministic (``generator`` is unused)."""
    x, y = embed(x, y, features)
    per_point, _ = _ball_counts(x, y, knn_radii(y, k))
    return float(per_point.double().sum() / (k * len(x)))


def coverage(
    x: Tensor,
    y: Tensor,
    *,
    k: int = 5,
    generator: torch.Generator | None = None,
    features: Features | None = None,
) -> float:
    """``1/N Σ_i 1[∃ j: x_j ∈ B(y_i, NND_k(y_i))]`` (Naeem et al. 2020, Sec. 3): the fraction
    of reference balls that hold at least one sample. Deterministic (``generator`` unused)."""
    x, y = embed(x, y, features)
    _, per_center = _ball_counts(x, y, knn_radii(y, k))
    return float((per_center > 0).double().mean())
