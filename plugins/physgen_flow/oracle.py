"""The exact flow-matching velocity of a finite data set, for tests and benchmarks.

Lipman, Chen, Ben-Hamu, Nickel, Le (2023), "Flow Matching for Generative Modeling": the
conditional OT path with σ_min = 0 marginalised over data uniform on ``{y_j}``. With it, a
solver's error against a tight reference is discretisation error alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from physgen.core.process import append_dims
from physgen.testing.oracles import gaussian_log_weights, per_example, sq_dists, weighted_mean

__all__ = ["flow_matching_velocity"]


def flow_matching_velocity(data: Tensor) -> Callable[[Tensor, Tensor | float], Tensor]:
    """The exact velocity ``v(x_t, t) = (x̂_1 − x_t) / (1 − t)`` of the linear path
    ``x_t = (1 − t) x_0 + t x_1`` with ``x_0 ~ N(0, I)`` and ``x_1`` uniform on ``data``
    (Lipman et al. 2023, the conditional OT path with σ_min = 0, marginalised over the data),
    where ``x̂_1 = Σ_j w_j y_j``, ``w_j ∝ exp(−||x_t − t y_j||² / (2 (1 − t)²))``.

    For a finite set the field is singular at ``t = 1`` (the flow collapses onto data points;
    there ``1 − t`` is replaced by the dtype's smallest normal number), so integrate to
    ``t < 1`` or make the last step an Euler step, which lands on ``x̂_1``.
    """

    def velocity(x: Tensor, t: Tensor | float) -> Tensor:
        t = per_example(t, x)
        gap = 1 - t  # the path's noise std; t > 1 continues the line x_t analytically
        gap = torch.where(gap == 0, torch.finfo(x.dtype).tiny, gap)
        sq = sq_dists(x, data, t)
        x1 = weighted_mean(gaussian_log_weights(sq, gap), data, x)
        return (x1 - x) / append_dims(gap, x.ndim)

    return velocity
