"""Exact fields for tests and benchmarks: denoisers, scores and flows known in closed form.

With an oracle field, the gap between a solver's output and a tight-tolerance reference from
the same prior draw is discretisation error alone (docs/math.md §6).

* :class:`GaussianMixture` — isotropic mixture ``Σ_k w_k N(μ_k, s_k² I)`` with its exact
  density, denoiser ``D(x; σ) = E[y | y + σ n = x]`` and score (EDM frame, docs/math.md §1, §6).
* :func:`empirical_denoiser` — the posterior mean over a finite data set ``{y_j}`` under the
  Gaussian kernel (diffusion); it holds a ``[B, M]`` table of squared distances per call. The
  building blocks (:func:`sq_dists`, :func:`gaussian_log_weights`, :func:`weighted_mean`) serve
  the process-specific oracles, which live with their plugins (``physgen_poisson.oracle``:
  PFGM++; ``physgen_flow.oracle``: flow matching).
* :func:`gaussian_flow` — the exact PF-ODE flow map for Gaussian data (docs/math.md §8).

Shapes: ``x`` is ``[B, *event]`` with ``prod(event) = N``; ``sigma`` and ``t`` are 0-dim or
``[B]`` tensors (or floats). Everything is computed in the dtype and on the device of ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from physgen.core.process import append_dims, as_time
from physgen.errors import ConfigError

__all__ = [
    "GaussianMixture",
    "empirical_denoiser",
    "gaussian_flow",
    "gaussian_log_weights",
    "per_example",
    "sq_dists",
    "weighted_mean",
]

#: elements of the ``[B, chunk, N]`` difference tensor built at once by the finite-set oracles
_CHUNK_ELEMENTS = 2**24


def per_example(v: Tensor | float, x: Tensor) -> Tensor:
    """σ or t as ``[B]`` in the dtype of ``x`` (a float is converted straight to that dtype,
    never through float32)."""
    return as_time(torch.as_tensor(v, dtype=x.dtype, device=x.device), x)


class GaussianMixture:
    """The isotropic Gaussian mixture ``p(y) = Σ_k w_k N(y; μ_k, s_k² I)`` in ``R^N``.

    ``weights`` ``[K]`` (non-negative, normalised here), ``means`` ``[K, N]``, ``stds`` ``[K]``
    (positive). Parameters keep the dtype and device they were given (see :meth:`to`); every
    method casts them to its input's dtype and device.
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor):
        weights, means, stds = (torch.as_tensor(v) for v in (weights, means, stds))
        if means.ndim != 2 or weights.shape != means.shape[:1] or stds.shape != weights.shape:
            raise ConfigError(
                "GaussianMixture needs weights [K], means [K, N], stds [K]; got "
                f"{list(weights.shape)}, {list(means.shape)}, {list(stds.shape)}"
            )
        if not (torch.isfinite(means).all() and torch.isfinite(stds).all()):
            raise ConfigError("GaussianMixture means and stds must be finite")
        if (weights < 0).any() or not torch.isfinite(weights).all() or weights.sum() <= 0:
            raise ConfigError("GaussianMixture weights must be finite, ≥ 0 and not all zero")
        if (stds <= 0).any():
            raise ConfigError(f"GaussianMixture stds must be > 0, got min {stds.min().item()}")
        self.weights = weights / weights.sum()
        self.means = means
        self.stds = stds

    @property
    def dim(self) -> int:
        """``N``, the number of scalar dimensions of one sample."""
        return self.means.shape[1]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> GaussianMixture:
        """A copy with its parameters on ``device`` in ``dtype``."""
        params = (p.to(device=device, dtype=dtype) for p in (self.weights, self.means, self.stds))
        return GaussianMixture(*params)

    def __repr__(self) -> str:
        k, n = self.means.shape
        return f"GaussianMixture(K={k}, N={n}, dtype={self.means.dtype})"

    # -- construction ------------------------------------------------------------------

    @classmethod
    def random(
        cls, k: int, dim: int, *, std: float, seed: int, dtype: torch.dtype = torch.float32
    ) -> GaussianMixture:
        """``k`` components with means ~ N(0, I), weights uniform on [0.5, 1.5] (normalised)
        and common std ``std``, drawn from a generator seeded by ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        means = torch.randn(k, dim, generator=gen, dtype=torch.float64)
        weights = 0.5 + torch.rand(k, generator=gen, dtype=torch.float64)
        stds = torch.full((k,), float(std), dtype=torch.float64)
        return cls(weights, means, stds).to(dtype=dtype)

    @classmethod
    def ring(
        cls,
        k: int = 8,
        *,
        radius: float = 2.0,
        std: float = 0.1,
        dtype: torch.dtype = torch.float32,
    ) -> GaussianMixture:
        """The 2-D "8 gaussians" toy: ``k`` equal components evenly spaced on a circle."""
        angle = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
        means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
        weights = torch.ones(k, dtype=torch.float64)
        stds = torch.full((k,), float(std), dtype=torch.float64)
        return cls(weights, means, stds).to(dtype=dtype)

    # -- the mixture and its smoothed versions -------------------------------------------

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws ``[n, N]`` in the mixture's dtype, on its device."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(
            n, self.dim, generator=generator, device=self.means.device, dtype=self.means.dtype
        )
        return self.means[k] + append_dims(self.stds[k], 2) * noise

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` ``[B]`` exactly, as a logsumexp over components."""
        return torch.logsumexp(self._log_joint(x, x.new_zeros(x.shape[0]))[0], dim=1)

    def score(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``∇ log p_σ(x)`` of the mixture smoothed by ``N(0, σ² I)`` (finite at σ = 0):
        ``−Σ_k γ_k (x − μ_k) / (s_k² + σ²)`` (docs/math.md §6)."""
        sigma = per_example(sigma, x)
        logits, diff, var = self._log_joint(x, sigma)
        gamma = torch.softmax(logits, dim=1)  # responsibilities γ_k(x), [B, K]
        score = -torch.einsum("bk,bkn->bn", gamma / var, diff)
        return score.reshape(x.shape)

    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``D(x; σ) = Σ_k γ_k (μ_k + s_k²/(s_k² + σ²) (x − μ_k))`` (docs/math.md §6), written as
        Tweedie's ``x + σ² ∇ log p_σ(x)`` so that σ = 0 returns ``x`` exactly."""
        sigma = per_example(sigma, x)
        return x + append_dims(sigma**2, x.ndim) * self.score(x, sigma)

    def _log_joint(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``log w_k N(x; μ_k, (s_k² + σ²) I)`` ``[B, K]``, ``x − μ_k`` ``[B, K, N]`` and the
        variances ``[B, K]``."""
        if x[0].numel() != self.dim:
            raise ConfigError(f"GaussianMixture of dim {self.dim} got x of shape {list(x.shape)}")
        weights, means, stds = (p.to(x) for p in (self.weights, self.means, self.stds))
        diff = x.flatten(1)[:, None, :] - means  # [B, K, N]
        var = stds**2 + sigma[:, None] ** 2  # [B, K]
        sq = diff.pow(2).sum(-1)
        log_norm = 0.5 * self.dim * torch.log(2 * math.pi * var)
        return weights.log() - 0.5 * sq / var - log_norm, diff, var


# --------------------------------------------------------------------------------------
# Finite data sets: the Gaussian posterior mean and the pieces of the plugins' oracles.
# --------------------------------------------------------------------------------------


def sq_dists(x: Tensor, data: Tensor, scale: Tensor) -> Tensor:
    """``||x_b − scale_b y_j||²`` ``[B, M]``, from explicit differences (the expansion
    ``|x|² + |y|² − 2 x·y`` cancels catastrophically at small σ), chunked over the data."""
    x = x.flatten(1)
    data = data.to(x).flatten(1)
    if data.shape[1] != x.shape[1]:
        raise ConfigError(f"data points have {data.shape[1]} dims, x has {x.shape[1]}")
    chunk = max(1, _CHUNK_ELEMENTS // max(1, x.shape[0] * x.shape[1]))
    scale = scale[:, None, None]
    parts = [
        (x[:, None, :] - scale * data[j : j + chunk]).pow(2).sum(-1)
        for j in range(0, data.shape[0], chunk)
    ]
    return torch.cat(parts, dim=1)


def weighted_mean(log_w: Tensor, data: Tensor, like: Tensor) -> Tensor:
    """``Σ_j softmax(log_w)_j y_j``, shaped like ``like``."""
    w = torch.softmax(log_w, dim=1)
    return (w @ data.to(like).flatten(1)).reshape(like.shape)


def gaussian_log_weights(sq: Tensor, sigma: Tensor) -> Tensor:
    """``−(||x − y_j||² − min_j) / (2σ²)``: shifting by the nearest distance keeps σ → 0
    finite (the nearest point gets weight 1)."""
    var = (sigma**2).clamp_min(torch.finfo(sq.dtype).tiny)
    return -(sq - sq.amin(1, keepdim=True)) / (2 * var[:, None])


def empirical_denoiser(data: Tensor) -> Callable[[Tensor, Tensor | float], Tensor]:
    """The exact denoiser ``D(x; σ) = Σ_j w_j y_j``, ``w_j ∝ exp(−||x − y_j||² / (2σ²))``, of
    the empirical distribution of ``data`` ``[M, *event]`` (docs/math.md §6). At σ = 0 it returns
    the nearest data point."""

    def denoise(x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = per_example(sigma, x)
        sq = sq_dists(x, data, torch.ones_like(sigma))
        return weighted_mean(gaussian_log_weights(sq, sigma), data, x)

    return denoise


def gaussian_flow(
    x: Tensor,
    sigma_from: Tensor | float,
    sigma_to: Tensor | float,
    mu: Tensor | float,
    s: Tensor | float,
) -> Tensor:
    """The exact PF-ODE flow map for data ``N(μ, s² I)`` (docs/math.md §8): from σ to σ',
    ``x' = μ + sqrt((s² + σ'²) / (s² + σ²)) (x − μ)``. ``mu`` broadcasts against one example
    (``[*event]`` or a float); ``s`` is a float or 0-dim tensor."""
    sigma_from, sigma_to = per_example(sigma_from, x), per_example(sigma_to, x)
    mu = torch.as_tensor(mu).to(x)
    s2 = torch.as_tensor(s).to(x) ** 2
    ratio = torch.sqrt((s2 + sigma_to**2) / (s2 + sigma_from**2))
    return mu + append_dims(ratio, x.ndim) * (x - mu)
