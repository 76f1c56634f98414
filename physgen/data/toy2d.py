"""Built-in toy datasets: five 2-D shapes and an N-d Gaussian mixture with an exact oracle.

**Scale convention.** Every dataset is centred and scaled by one isotropic factor so that its
mean is 0 and its mean squared coordinate is 1 (``E‖x‖² = d``; the "σ_data" of EDM is 1).
The centre and factor are computed in closed form from each construction, never from the
drawn sample, so the distribution does not depend on ``n`` or ``seed``. One factor for all
coordinates keeps each shape's aspect ratio (a coordinate's own std may differ from 1, e.g.
moons ≈ 1.23 × 0.70); 2-D points lie within about [-3, 3].

**Options.** ``noise`` is the std of the Gaussian jitter in the raw construction's units
(those of ``sklearn.datasets``, before scaling); ``std`` is a mixture component's std in the
final units. ``8gaussians`` has modes on a circle of radius √(2(1 − std²)) ≈ 1.41 (std 0.1).

**Randomness.** ``seed`` picks the sample, never the distribution (``gmm``'s mixture comes
from ``mixture_seed``). Row ``i`` is a function of ``(seed, i)`` alone: all draws come from one
``[n, k]`` block of uniforms of an explicit ``torch.Generator``, so the first ``m`` rows of a
larger draw equal a draw of ``m``. The global RNG is never touched.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from physgen.data import Dataset, _check_n
from physgen.errors import ConfigError, DataError
from physgen.registry import DatasetEntry

if TYPE_CHECKING:
    from physgen.testing.oracles import GaussianMixture

__all__ = [
    "DATASETS",
    "checkerboard",
    "eight_gaussians",
    "gmm",
    "gmm_of",
    "moons",
    "rings",
    "swissroll",
]


# -- randomness ------------------------------------------------------------------------------


def _generator(seed: Any) -> torch.Generator:
    try:
        value = operator.index(seed)
    except TypeError:
        raise ConfigError(f"seed must be an integer, got {seed!r}") from None
    return torch.Generator().manual_seed(value)


def _uniforms(n: int, k: int, generator: torch.Generator) -> Tensor:
    """``[n, k]`` float64 uniforms in the open interval (0, 1); row i uses draws i·k … i·k+k−1."""
    u = torch.rand(n, k, generator=generator, dtype=torch.float64)
    tiny = torch.finfo(torch.float64).eps
    return u.clamp(tiny, 1 - tiny)


def _normals(u: Tensor) -> Tensor:
    """Standard normals from uniforms by the inverse CDF, Φ⁻¹(u) = √2 erf⁻¹(2u − 1)."""
    return math.sqrt(2) * torch.erfinv(2 * u - 1)


# -- option checks ---------------------------------------------------------------------------


def _int_option(name: str, value: Any, minimum: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        out = operator.index(value)
    except TypeError:
        raise ConfigError(f"option {name} must be an integer, got {value!r}") from None
    if out < minimum:
        raise ConfigError(f"option {name} must be ≥ {minimum}, got {out}")
    return out


def _float_option(name: str, value: Any, low: float, high: float = math.inf) -> float:
    """``value`` as a float in ``[low, high)``, else a one-line ConfigError."""
    try:
        if isinstance(value, bool):
            raise TypeError
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name} must be a number, got {value!r}") from None
    if not (low <= out < high):
        raise ConfigError(f"option {name} must be in [{low}, {high}), got {out}")
    return out


def _std_option(value: Any) -> float:
    std = _float_option("std", value, 0.0, 1.0)
    if std == 0:
        raise ConfigError("option std must be > 0 (a mixture component needs a width)")
    return std


def _make(
    name: str,
    x: Tensor,
    labels: Tensor | None,
    classes: int,
    seed: int,
    options: dict[str, Any],
    mixture: dict[str, Any] | None = None,
) -> Dataset:
    """The :class:`Dataset`, with ``info`` = source, seed, options (and mixture parameters)."""
    info: dict[str, Any] = {"source": name, "seed": int(seed), "options": options}
    if mixture is not None:
        info["mixture"] = mixture
    return Dataset(name, x.to(torch.float32), labels, classes if labels is not None else 0, info)


# -- 2-D shapes ------------------------------------------------------------------------------


def moons(n: int, *, seed: int = 0, noise: float = 0.05) -> Dataset:
    """Two interleaving half circles (sklearn's ``make_moons``), label = which moon; ``[n, 2]``.

    Raw: outer (cos θ, sin θ), inner (1 − cos θ, ½ − sin θ), θ ~ U[0, π], plus ``noise``·N(0, I).
    """
    n, noise = _check_n(n), _float_option("noise", noise, 0.0)
    u = _uniforms(n, 4, _generator(seed))
    labels = (u[:, 0] >= 0.5).long()
    theta = math.pi * u[:, 1]
    outer = torch.stack([theta.cos(), theta.sin()], 1)
    inner = torch.stack([1 - theta.cos(), 0.5 - theta.sin()], 1)
    x = torch.where(labels[:, None] == 1, inner, outer) + noise * _normals(u[:, 2:])
    # E[cos θ] = 0, E[sin θ] = 2/π, E[cos²] = E[sin²] = ½  →  centre (½, ¼) and variances:
    var_x = 0.5 + 0.25
    var_y = (0.5 - 4 / math.pi**2) + (2 / math.pi - 0.25) ** 2
    scale = math.sqrt((var_x + var_y) / 2 + noise**2)
    x = (x - torch.tensor([0.5, 0.25], dtype=x.dtype)) / scale
    return _make("moons", x, labels, 2, seed, {"noise": noise})


def eight_gaussians(n: int, *, seed: int = 0, std: float = 0.1) -> Dataset:
    """Eight equal Gaussians (std ``std``) on a circle, label = mode; ``[n, 2]``.

    Radius √(2(1 − std²)) makes ``E‖x‖² = 2``. ``gmm_of`` rebuilds the exact mixture.
    """
    n, std = _check_n(n), _std_option(std)
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = math.sqrt(2 * (1 - std**2)) * torch.stack([angles.cos(), angles.sin()], 1)
    weights = torch.full((8,), 1 / 8, dtype=torch.float64)
    return _mixture_dataset("8gaussians", n, seed, weights, means, std, {"std": std})


def checkerboard(n: int, *, seed: int = 0, cells: int = 4) -> Dataset:
    """Uniform on the dark squares of a ``cells × cells`` board; ``[n, 2]``, unlabelled.

    Both marginals are uniform on [−cells/2, cells/2] (variance cells²/12), scaled to 1.
    """
    n, cells = _check_n(n), _int_option("cells", cells, 2)
    if cells % 2:
        raise ConfigError(f"option cells must be even, got {cells}")
    u = _uniforms(n, 4, _generator(seed))
    column = (u[:, 0] * cells).floor()
    row = 2 * (u[:, 1] * (cells // 2)).floor() + column % 2  # dark squares: column + row even
    x = torch.stack([column + u[:, 2], row + u[:, 3]], 1) - cells / 2
    x = x / (cells / math.sqrt(12))
    return _make("checkerboard", x, None, 0, seed, {"cells": cells})


def swissroll(n: int, *, seed: int = 0, noise: float = 0.5) -> Dataset:
    """A 2-D spiral: (t cos t, t sin t), t ~ U[1.5π, 4.5π] (sklearn's ``make_swiss_roll``
    in the plane), plus ``noise``·N(0, I); ``[n, 2]``, unlabelled."""
    n, noise = _check_n(n), _float_option("noise", noise, 0.0)
    a, b = 1.5 * math.pi, 4.5 * math.pi
    u = _uniforms(n, 3, _generator(seed))
    t = a + (b - a) * u[:, 0]
    x = torch.stack([t * t.cos(), t * t.sin()], 1) + noise * _normals(u[:, 1:])
    # Means from ∫ t cos t = t sin t + cos t and ∫ t sin t = sin t − t cos t; E[t²] from ∫ t².
    mean_x = ((b * math.sin(b) + math.cos(b)) - (a * math.sin(a) + math.cos(a))) / (b - a)
    mean_y = ((math.sin(b) - b * math.cos(b)) - (math.sin(a) - a * math.cos(a))) / (b - a)
    second = (b**3 - a**3) / (3 * (b - a)) + 2 * noise**2
    scale = math.sqrt((second - mean_x**2 - mean_y**2) / 2)
    x = (x - torch.tensor([mean_x, mean_y], dtype=x.dtype)) / scale
    return _make("swissroll", x, None, 0, seed, {"noise": noise})


def rings(n: int, *, seed: int = 0, rings: int = 4, noise: float = 0.03) -> Dataset:
    """Concentric circles of radii k/rings (k = 1 … rings), equally likely, plus
    ``noise``·N(0, I); label = ring; ``[n, 2]``."""
    n, noise = _check_n(n), _float_option("noise", noise, 0.0)
    count = _int_option("rings", rings, 1)
    u = _uniforms(n, 4, _generator(seed))
    labels = (u[:, 0] * count).floor().long()
    radius = (labels + 1).double() / count
    theta = 2 * math.pi * u[:, 1]
    x = radius[:, None] * torch.stack([theta.cos(), theta.sin()], 1) + noise * _normals(u[:, 2:])
    mean_r2 = (count + 1) * (2 * count + 1) / (6 * count**2)  # mean of (k/R)², k = 1 … R
    x = x / math.sqrt(mean_r2 / 2 + noise**2)
    return _make("rings", x, labels, count, seed, {"rings": count, "noise": noise})


# -- Gaussian mixtures -----------------------------------------------------------------------


def gmm(
    n: int,
    *,
    seed: int = 0,
    dim: int = 2,  # dimension N of x
    components: int = 8,  # number of mixture components K
    std: float = 0.1,  # every component's std, in final units (0 < std < 1)
    mixture_seed: int = 0,  # picks the weights and means; ``seed`` picks the sample
) -> Dataset:
    """Samples of a random Gaussian mixture ``Σ_k w_k N(μ_k, std² I)`` in N-d; label = component.

    Weights ∝ 1 + U(0, 1); means Gaussian, then shifted and scaled so ``Σ w_k μ_k = 0`` and
    ``Σ w_k ‖μ_k‖² = N(1 − std²)``: the data has mean 0 and ``E‖x‖² = N`` exactly (with one
    component the mean is 0 and the scale is ``std``). :func:`gmm_of` rebuilds the mixture,
    which gives the exact density and denoiser (docs/math.md §6).
    """
    n, std = _check_n(n), _std_option(std)
    dim = _int_option("dim", dim, 1)
    k = _int_option("components", components, 1)
    g = _generator(mixture_seed)
    weights = 1 + torch.rand(k, generator=g, dtype=torch.float64)
    weights = weights / weights.sum()
    means = torch.randn(k, dim, generator=g, dtype=torch.float64)
    means = means - weights @ means
    spread = float(weights @ means.square().sum(1))
    if spread > 0:
        means = means * math.sqrt(dim * (1 - std**2) / spread)
    options = {"dim": dim, "components": k, "std": std, "mixture_seed": int(mixture_seed)}
    return _mixture_dataset("gmm", n, seed, weights, means, std, options)


def _mixture_dataset(
    name: str,
    n: int,
    seed: int,
    weights: Tensor,
    means: Tensor,
    std: float,
    options: dict[str, Any],
) -> Dataset:
    """``n`` draws of ``Σ_k w_k N(μ_k, std² I)`` (weights ``[K]``, means ``[K, N]``), labelled
    by component, with the parameters in ``info["mixture"]``."""
    k, dim = means.shape
    u = _uniforms(n, 1 + dim, _generator(seed))
    cdf = weights.cumsum(0)
    labels = torch.searchsorted(cdf, u[:, :1].contiguous()).squeeze(1).clamp(max=k - 1)
    x = means[labels] + std * _normals(u[:, 1:])
    mixture = {"weights": weights.tolist(), "means": means.tolist(), "stds": [std] * k}
    return _make(name, x, labels, k, seed, options, mixture)


def gmm_of(dataset: Dataset, *, dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """The exact :class:`~physgen.testing.oracles.GaussianMixture` a mixture dataset was drawn from.

    Works for any dataset whose ``info["mixture"]`` holds ``weights [K]``, ``means [K][N]`` and
    ``stds [K]`` (``gmm``, ``8gaussians``); parameters come back in ``dtype``.
    """
    from physgen.testing.oracles import GaussianMixture

    mixture = dataset.info.get("mixture")
    if not isinstance(mixture, dict) or not {"weights", "means", "stds"} <= mixture.keys():
        raise DataError(
            f"{dataset.name}: no Gaussian-mixture parameters in info['mixture'] "
            "(datasets that have them: gmm, 8gaussians)"
        )
    return GaussianMixture(
        torch.tensor(mixture["weights"], dtype=dtype),
        torch.tensor(mixture["means"], dtype=dtype),
        torch.tensor(mixture["stds"], dtype=dtype),
    )


#: the built-in 2-D toy datasets
DATASETS = [
    DatasetEntry("moons", moons, "two interleaving half circles, labelled by moon (2-D)"),
    DatasetEntry(
        "8gaussians", eight_gaussians, "eight Gaussians on a circle, labelled by mode (2-D)"
    ),
    DatasetEntry("checkerboard", checkerboard, "uniform on the dark squares of a checkerboard"),
    DatasetEntry("swissroll", swissroll, "a noisy 2-D spiral (swiss roll seen end-on)"),
    DatasetEntry("rings", rings, "concentric circles, labelled by ring (2-D)"),
    DatasetEntry(
        "gmm", gmm, "random N-d Gaussian mixture with exact density and denoiser (gmm_of)"
    ),
]
