"""GenPhys's Yukawa generative model: a screened Poisson field, sampled by an exact ODE.

Reference: Liu, Luo, Xu, Jaakkola, Tegmark (2023), "GenPhys: From Physical Processes to
Generative Models", arXiv:2304.02637. GenPhys turns a PDE into a generative model when it can
be written as a density flow ``∂p/∂t + ∇·(p v) = R`` and is *smoothing* (s-generative:
high-frequency modes die faster than the zero mode, read off the dispersion relation). Its new
example is the Yukawa (massive, screened) field. The numbered equations (Y1)–(Y8) below are
the ones this module implements: (Y1)–(Y3) restate GenPhys's construction for the Yukawa
field; (Y4)–(Y8) are derived here, and each is checked against an independent route in this
package's tests.

(Y1) The field. Data ``ρ(x) = p_data`` on the plane ``t = 0`` of ``R^N × R`` sources
``∂_t²φ + ∇²φ − m² φ = −ρ(x) δ(t)``; ``t`` is the augmented coordinate (PFGM's ``z``).
(Y2) The density flow (GenPhys). ``p = −∂_tφ`` obeys ``∂_t p + ∇·(p v) = R`` with
``p v = −∇_x φ`` and ``R = −m² φ``: the field lines carry mass and the mass term kills it.
(Y3) Smoothing. A mode ``e^{ik·x}`` decays as ``e^{−ω t}``, ``ω = √(|k|² + m²)``; relative to the
zero mode it shrinks as ``e^{−(ω − m) t} → 0`` for every ``k ≠ 0`` iff ``m² ≥ 0``. So the Yukawa
process is s-generative for every real mass ``m ∈ [0, ∞)``; ``m² < 0`` (a tachyonic mass) makes
the modes ``|k| < |m|`` oscillate instead of decay, and is refused.

(Y4) The kernel. Normalising ``p`` by its mass ``e^{−m t}/2`` gives, for one charge at ``y``, the
Fourier transform ``exp(−t(√(|k|² + m²) − m))``: the symmetric normal-inverse-Gaussian law
NIG(α = m, δ = t) (Barndorff-Nielsen 1997), a Gaussian variance mixture

    x = y + √W n,   n ~ N(0, I_N),   W ~ IG(mean t/m, shape t²),

with density ``2t e^{mt} (2π)^{−(N+1)/2} (m/s)^{(N+1)/2} K_{(N+1)/2}(m s)``,
``s² = |x − y|² + t²`` — the Yukawa flux through the plane at height ``t``. ``m → 0``:
``W = t²/χ²_1``, the multivariate Cauchy of scale ``t``, i.e. PFGM (Xu et al. 2022) = PFGM++
with ``D = 1``, ``r = σ = t``. ``m t → ∞``: ``W → t/m``, the Gaussian of ``σ² = t/m`` (diffusion).
(Y5) The σ-frame. ``σ(t) = t/√(1 + m t)`` interpolates both scales; inverted,
``t = a σ`` with ``a = (κ + √(κ² + 4))/2``, ``κ = m σ``, and ``V = W/σ² ~ IG(a/κ, a²)``
depends on ``κ`` alone: ``x = y + σ √V n``. ``W`` is drawn exactly by Michael, Schucany & Haas
(1976) from normals only, so plain and stacked generators both work.

(Y6) An exact flow with no birth and death. GenPhys's velocity per charge is
``v = −∇φ/p = (x − y)/t``: straight rays that rescale the kernel, while (Y4)'s shape changes
with ``m t``; the death term ``R`` makes up the difference. We move mass instead: keep each
``W_t`` at a fixed quantile of its law. From the IG CDF
``F(w; t) = Φ((m w − t)/√w) + e^{2mt} Φ(−(m w + t)/√w)``, ``dW/dt = −∂_t F / ∂_w F = (2W/t) g``,

    g = 1 − m √W M(b),   b = (m W + t)/√W,   M(b) = Φ(−b)/φ(b)  (Mills' ratio),

so ``x_t = y + √W_t n`` has ``dx/dt = g (x − y)/t`` and, for every ``t``, exactly the law (Y4).
The marginal velocity ``E[dx/dt | x_t]`` then carries the marginals exactly (the conditional
flow argument of Lipman et al. 2023, Thm. 1). ``g ∈ (0, 1]``; ``g = 1`` at ``m = 0`` (GenPhys's
``v``, and ``R = 0``: PFGM), ``g → 1/2`` as ``m t → ∞`` (the diffusion PF-ODE in ``t = m σ²``).
(Y7) The ODE in σ. With ``ḡ = d ln σ/d ln t = (2 + m t)/(2(1 + m t)) = (1 + a²)/(2a²)``,

    dx/dσ = (x − D(x; σ))/σ,   D(x; σ) = E[ŷ | x],   ŷ = y + (1 − g/ḡ)(x − y),

the σ-frame of physgen's :class:`~physgen.core.process.DenoiserView`. ``D`` is the posterior mean
``E[y | x]`` exactly at ``m = 0`` (PFGM) and ``m = ∞`` (EDM); in between it is the posterior
mean of the moving point ``ŷ``, and every solver that needs only this ODE form (Heun, RK,
dopri5, DPM-Solver++) integrates the Yukawa flow. There is no score view: the kernel is not
Gaussian.
(Y8) Training: EDM's preconditioned denoiser and λ(σ)-weighted loss (Karras et al. 2022, eq. 7
and 8, Table 1) with target ``ŷ``, ``ln σ ~ N(P_mean, P_std²)``, ``x`` from (Y5). Sampling: the
prior is (Y4) at ``σ_max`` centred at 0, with its exact log-density; integrate (Y7) on EDM's
σ-grid (eq. 5).

Numerics: ``W``, ``g`` and the radial quadrature are float64; ``M(b)`` is
``√(π/2) erfcx(b/√2)``, finite for every ``b ≥ 0``. The log-density integrates (Y4)'s mixture
over ``ln V`` by the trapezoid rule around its peak (:func:`kernel_quadrature`), which stays
finite where ``K_ν`` of order ``(N+1)/2 ~ 10³`` would overflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from physgen.core.options import option
from physgen.core.precond import PreconditionedProcess, PrecondOptions
from physgen.core.process import (
    PriorFn,
    append_dims,
    gaussian_logp,
)
from physgen.core.rng import Generator, randn
from physgen.errors import ConfigError

__all__ = [
    "Yukawa",
    "YukawaOptions",
    "kernel_quadrature",
    "sample_v",
    "sigma_to_t",
    "target_ratio",
    "yukawa_noise",
    "yukawa_prior_logp",
]


@dataclass(frozen=True)
class YukawaOptions(PrecondOptions):
    """EDM's preconditioning options (Y8) and the mass ``m``."""

    m: float = option(1.0, "mass m ≥ 0 of the field in 1/σ units; 0 is PFGM (D = 1), inf is EDM")


# --------------------------------------------------------------------------------------
# The kernel in the σ-frame
# --------------------------------------------------------------------------------------


def _a(kappa: Tensor) -> Tensor:
    """``a = t/σ = (κ + √(κ² + 4))/2`` (Y5), the positive root of ``a² − κ a − 1 = 0``."""
    return (kappa + (kappa**2 + 4).sqrt()) / 2


def sigma_to_t(sigma: Tensor, m: float) -> Tensor:
    """The augmented coordinate ``t = a σ`` of the σ-frame (Y5); ``σ = t/√(1 + m t)``."""
    return _a(m * sigma) * sigma


def sample_v(
    kappa: Tensor, *, generator: Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """``V = W/σ² ~ IG(mean a/κ, shape a²)`` per entry of ``kappa = m σ`` ``[B]`` (Y5), float64,
    by Michael, Schucany & Haas (1976) from two standard normals per row (the uniform as
    ``Φ(z)``). Written so that ``κ = 0`` gives the Lévy law ``1/χ²_1`` with no 0·∞."""
    z = randn((kappa.shape[0], 2), generator=generator, device=device, dtype=torch.float64)
    kappa = kappa.to(device=z.device, dtype=torch.float64)
    a = _a(kappa)
    y = z[:, 0].pow(2).clamp_min(torch.finfo(torch.float64).tiny)
    phi = kappa * a  # shape/mean = m t
    s = (y * (y + 4 * phi)).sqrt()
    small = 4 * a**2 * y / (s + y) ** 2  # the smaller root μ − (μ²/2λ)(s − y), cancellation-free
    q = small * kappa / a  # small / mean
    take_small = torch.special.log_ndtr(z[:, 1]) <= -torch.log1p(q)  # U ≤ μ/(μ + small)
    return torch.where(take_small, small, (a / kappa) ** 2 / small)


def target_ratio(v: Tensor, kappa: Tensor) -> Tensor:
    """``g/ḡ`` of (Y6)–(Y7) in the σ-frame: ``g = 1 − κ√V M(κ√V + a/√V)``,
    ``ḡ = (1 + a²)/(2a²)``; 1 at ``κ = 0``, → 1 as ``κ → ∞``. ``v``, ``kappa`` broadcast."""
    a, root = _a(kappa), v.sqrt()
    b = kappa * root + a / root  # (m W + t)/√W
    mills = math.sqrt(math.pi / 2) * torch.special.erfcx(b / math.sqrt(2))  # Φ(−b)/φ(b)
    g = 1 - kappa * root * mills  # (Y6)
    return g * 2 * a**2 / (1 + a**2)  # g/ḡ (Y7)


def yukawa_noise(
    sigma: Tensor,
    shape: tuple[int, ...],
    m: float,
    *,
    generator: Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Unit-σ kernel noise ``e = √V n`` of ``shape`` ``[B, *event]`` and its ``V`` ``[B]``
    (float64) for per-example ``sigma`` ``[B]``: ``x = y + σ e`` follows (Y4). ``V`` is drawn
    before ``n``; ``m = inf`` gives ``V = 1``, ``e = n`` (the Gaussian kernel, EDM)."""
    v = None if math.isinf(m) else sample_v(m * sigma.double(), generator=generator, device=device)
    n = randn(shape, generator=generator, device=device, dtype=dtype)
    if v is None:
        v = n.new_ones(shape[0], dtype=torch.float64)
    return n * append_dims(v.sqrt().to(dtype), n.ndim), v


def kernel_quadrature(
    sq: Tensor, sigma: Tensor, m: float, n_dim: int, *, per_width: float = 4.0
) -> tuple[Tensor, Tensor]:
    """Nodes ``V`` and log-weights ``w`` (shape ``[*S, Q]`` for ``sq`` of shape ``[*S]``) with
    ``logsumexp(w) = log p_σ(x | y)``, the (Y4) density of ``x`` at ``sq = |x − y|²`` in
    ``R^n_dim``, and ``softmax(w)`` the posterior of ``V`` given ``x`` and ``y``. Float64.

    In ``ℓ = ln V`` the mixture's integrand is
    ``a (2π)^{−ν} σ^{−N} exp(−ν ℓ − (κ√V − a/√V)²/2 − sq/(2σ²V))``, ``ν = (N+1)/2``:
    log-concave, peaked at ``V* = S²/(ν + √(ν² + κ²S²))``, ``S² = a² + sq/σ²``, with width
    ``1/√(ν + κ²V*)``. Below the peak it falls doubly exponentially (12 widths reach e^−60);
    above, at least as ``e^{−ν(Δℓ − 1)}`` (``(1 + 60/ν)√ν`` widths). The trapezoid rule with
    ``per_width`` nodes per width (4: log-density exact to ~1e-13) covers both.
    """
    sq, sigma = torch.broadcast_tensors(sq.to(torch.float64), sigma.to(sq.device, torch.float64))
    kappa = m * sigma
    a, nu = _a(kappa), (n_dim + 1) / 2
    s2 = a**2 + sq / sigma**2
    peak = s2 / (nu + (nu**2 + kappa**2 * s2).sqrt())
    width = (nu + kappa**2 * peak).rsqrt()
    below, above = 12.0, max(12.0, (1 + 60 / nu) * math.sqrt(nu))
    count = math.ceil(per_width * (below + above)) + 1
    nodes = torch.linspace(-below, above, count, dtype=torch.float64, device=sq.device)
    ell = peak.log()[..., None] + width[..., None] * nodes
    v = ell.exp()
    a_, kappa_, sq_, sigma_ = (z[..., None] for z in (a, kappa, sq, sigma))
    log_w = (
        a_.log()
        - nu * math.log(2 * math.pi)
        - n_dim * sigma_.log()
        - nu * ell
        - (kappa_ * v.sqrt() - a_ * (-ell / 2).exp()).pow(2) / 2
        - sq_ / (2 * sigma_**2 * v)
        + (width[..., None] * ((below + above) / (count - 1))).log()  # dℓ
    )
    return v, log_w


def yukawa_prior_logp(sigma: float, m: float) -> Callable[[Tensor], Tensor]:
    """``log p(x)`` ``[B]`` of the kernel (Y4) at ``sigma`` centred at 0; ``m = inf`` is the
    Gaussian ``N(0, σ² I)``. Computed in float64 by :func:`kernel_quadrature`."""
    if math.isinf(m):
        return gaussian_logp(sigma)

    def logp(x: Tensor) -> Tensor:
        sq = x.flatten(1).double().pow(2).sum(1)
        _, log_w = kernel_quadrature(sq, torch.tensor(sigma, dtype=torch.float64), m, x[0].numel())
        return torch.logsumexp(log_w, dim=-1).to(x.dtype)

    return logp


def _prior(sigma: float, m: float) -> PriorFn:
    def prior(
        shape: tuple[int, ...],
        *,
        generator: Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        sigmas = torch.full((shape[0],), sigma, dtype=torch.float64)
        e, _ = yukawa_noise(sigmas, shape, m, generator=generator, device=device, dtype=dtype)
        return sigma * e

    return prior


# --------------------------------------------------------------------------------------
# The process
# --------------------------------------------------------------------------------------


class Yukawa(PreconditionedProcess):
    """GenPhys's Yukawa generative model with mass ``m``: EDM's preconditioned denoiser and
    loss (Y8) with the kernel (Y4) and target ŷ (Y7). Views: ode, denoiser (the σ-frame ODE
    (Y7)); no score view (the kernel is not Gaussian)."""

    Options = YukawaOptions
    options: YukawaOptions

    def validate(self) -> None:
        if not self.options.m >= 0:  # also catches NaN
            raise ConfigError(
                "yukawa: mass m must be ≥ 0 (m² < 0 is not smoothing, GenPhys), "
                f"got {self.options.m}"
            )
        super().validate()

    def perturb(
        self, y: Tensor, sigma: Tensor, generator: Generator | None
    ) -> tuple[Tensor, Tensor]:
        m = self.options.m
        e, v = yukawa_noise(sigma, y.shape, m, generator=generator, device=y.device, dtype=y.dtype)
        x = y + append_dims(sigma, y.ndim) * e  # x ~ (Y4) via (Y5)
        if math.isinf(m):
            ratio = torch.ones_like(sigma)
        else:
            ratio = target_ratio(v, m * sigma.double()).to(y.dtype)
        target = y + append_dims((1 - ratio) * sigma, y.ndim) * e  # ŷ = y + (1 − g/ḡ)(x − y) (Y7)
        return x, target

    def prior_at(self, sigma: float) -> PriorFn:
        return _prior(sigma, self.options.m)  # (Y4) at σ_max, centred at 0 (Y8)

    def prior_logp_at(self, sigma: float) -> Callable[[Tensor], Tensor]:
        return yukawa_prior_logp(sigma, self.options.m)
