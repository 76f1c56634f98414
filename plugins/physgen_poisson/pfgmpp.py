"""PFGM++: Poisson flow with ``D`` augmented dimensions, trained and sampled in the σ-frame.

Xu, Liu, Tian, Tong, Tegmark, Jaakkola (2023), "PFGM++: Unlocking the Potential of
Physics-Inspired Generative Models" (ICML). Data ``y ∈ R^N`` is perturbed by the kernel
``p_r(x | y) ∝ (||x − y||² + r²)^(−(N+D)/2)`` (eq. 4), aligned with diffusion by
``r = σ √D`` (§4, "r = σ√D"). Training is EDM's (Karras et al. 2022) preconditioned denoiser
and λ(σ)-weighted loss with only the perturbation swapped (§4, Algorithm 1); sampling integrates
the same ``dx/dσ = (x − D(x; σ))/σ`` (eq. 5 rewritten in σ, Algorithm 2) from a heavy-tailed
prior at ``r_max = σ_max √D``. ``D = inf`` is EDM exactly (Proposition 4.1); ``D = 1`` is the
original PFGM (Xu et al. 2022).

Sampling the kernel. PFGM++ Appendix B draws ``R = r √(B/(1 − B))`` with
``B ~ Beta(N/2, D/2)`` and a uniform direction ``u``. Writing ``B = X/(X + Y)`` with
``X = ||n||² ~ χ²_N`` for the same Gaussian ``n`` whose direction is ``u`` and an independent
``Y ~ χ²_D`` gives ``R u = r n / √Y``, i.e.

    x − y = σ n / √(Y/D),    n ~ N(0, I_N),  Y ~ χ²_D = 2 Gamma(D/2)

— the multivariate Student-t with ``D`` degrees of freedom and scale ``σ``. This needs no Beta
sampler, costs one scalar per example on top of the Gaussian noise, is exact in distribution
for every ``D``, and for ``D → ∞`` the factor ``Y/D → 1`` is computed as a ratio near 1, never
as a huge number. ``Gamma(D/2)`` is drawn by Marsaglia & Tsang (2000, "A simple method for
generating gamma variables", ACM TOMS 26(3)) with rejection, using only standard normals from
the caller's generator (uniforms as ``Φ(z)``, in log space via ``log_ndtr``), so it works with a
plain ``torch.Generator`` and with :class:`~physgen.core.rng.StackedGenerator` (torch's own gamma
sampler takes no generator). Everything radial is float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from physgen.core.options import option
from physgen.core.precond import PreconditionedProcess, PrecondOptions
from physgen.core.process import PriorFn, append_dims
from physgen.core.rng import Generator, randn
from physgen.errors import ConfigError

__all__ = ["PFGMPP", "PFGMPPOptions", "pfgmpp_noise", "pfgmpp_prior_logp", "sample_gamma"]

#: Marsaglia–Tsang candidates drawn per example and round (each accepted with p > 0.95)
_CANDIDATES = 4


@dataclass(frozen=True)
class PFGMPPOptions(PrecondOptions):
    """EDM's preconditioning options (the radius is ``r = σ √D``, PFGM++ §4) and ``D``."""

    D: float = option(128.0, "augmented dimensions D > 0; inf is the Gaussian limit (EDM exactly)")


def sample_gamma(
    shape_a: float,
    count: int,
    *,
    generator: Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``count`` draws of ``Gamma(shape_a, 1)``, float64, exact in distribution (Marsaglia &
    Tsang 2000), from standard normals of ``generator`` only. Row ``i`` is the first accepted
    candidate of its own stream, so with a :class:`~physgen.core.rng.StackedGenerator` it does not
    depend on the batch."""

    if device is None and generator is not None:
        device = generator.device  # both kinds of generator know theirs

    def normals(*shape: int) -> Tensor:
        return randn((count, *shape), generator=generator, device=device, dtype=torch.float64)

    boost = None
    if shape_a < 1:  # Gamma(a) = Gamma(a + 1) U^(1/a) (Marsaglia & Tsang §6); U drawn first
        boost = torch.special.log_ndtr(normals(1)[:, 0]) / shape_a
        shape_a += 1
    d = shape_a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    out = torch.full((count,), math.nan, dtype=torch.float64, device=device)
    todo = torch.ones(count, dtype=torch.bool, device=device)
    while bool(todo.any()):
        z, zu = normals(2, _CANDIDATES).unbind(1)
        cz = c * z
        ok = cz > -1  # v = (1 + cz)³ > 0
        cz = torch.where(ok, cz, torch.zeros_like(cz))
        w = cz * (3 + cz * (3 + cz))  # v − 1, without cancellation
        # accept if log U < z²/2 + d − d v + d log v; for large d the bracket is written as
        # 3 log1p(cz) − (v − 1) so that it keeps full precision (D up to 1e7 and beyond).
        ok &= torch.special.log_ndtr(zu) < 0.5 * z**2 + d * (3 * torch.log1p(cz) - w)
        first = torch.where(ok.any(1), ok.to(torch.int8).argmax(1), -1)
        hit = todo & (first >= 0)
        pick = (d * (1 + w)).gather(1, first.clamp_min(0)[:, None])[:, 0]
        out = torch.where(hit, pick, out)
        todo &= ~hit
    if boost is not None:
        out = out * boost.exp()
    return out


def pfgmpp_noise(
    shape: tuple[int, ...],
    D: float,
    *,
    generator: Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Unit-σ PFGM++ kernel noise ``e`` of ``shape`` ``[B, *event]``: ``x = y + σ e`` follows
    ``p_r(x | y) ∝ (||x − y||² + r²)^(−(N+D)/2)`` with ``r = σ √D`` (PFGM++ eq. 4), so
    ``||e||²/D ~ BetaPrime(N/2, D/2)``. ``e = n / √(χ²_D/D)``; ``D = inf`` gives ``e = n``,
    drawing exactly what a Gaussian kernel draws (module docstring)."""
    n = randn(shape, generator=generator, device=device, dtype=dtype)
    if math.isinf(D):
        return n
    g = sample_gamma(D / 2, shape[0], generator=generator, device=n.device)
    scale = (D / 2 / g).sqrt()  # √(D/Y) with Y = 2 Gamma(D/2): a ratio near 1 for large D
    return n * append_dims(scale.to(dtype), n.ndim)


def pfgmpp_prior_logp(sigma: float, D: float) -> Callable[[Tensor], Tensor]:
    """``log p(x)`` ``[B]`` of the kernel at ``r = σ √D`` centred at 0: the multivariate t
    with ``D`` degrees of freedom and scale ``σ``. From
    ``∫_{R^N} (||x||² + r²)^(−(N+D)/2) dx = π^(N/2) Γ(D/2) / (Γ((N+D)/2) r^D)``,

        log p = lnΓ((N+D)/2) − lnΓ(D/2) − (N/2) ln(π D) − N ln σ − (N+D)/2 · ln(1 + ||x||²/r²),

    written with ``h = N/2``, ``a = D/2`` as ``[lnΓ(a+h) − lnΓ(a) − h ln a] − h ln 2π − N ln σ −
    (a+h) log1p(||x||²/r²)``, whose bracket → 0 and last term → ||x||²/(2σ²) as D → ∞: the
    Gaussian ``N(0, σ² I)``, returned exactly for ``D = inf``. Computed in float64."""

    def logp(x: Tensor) -> Tensor:
        n = x[0].numel()
        sq = x.flatten(1).double().pow(2).sum(1)
        h = n / 2
        if math.isinf(D):
            out = -0.5 * sq / sigma**2
        else:
            a = D / 2
            const = math.lgamma(a + h) - math.lgamma(a) - h * math.log(a)
            out = const - (a + h) * torch.log1p(sq / (D * sigma**2))
        out = out - n * math.log(sigma) - h * math.log(2 * math.pi)
        return out.to(x.dtype)

    return logp


def _prior(sigma: float, D: float) -> PriorFn:
    def prior(
        shape: tuple[int, ...],
        *,
        generator: Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        return sigma * pfgmpp_noise(shape, D, generator=generator, device=device, dtype=dtype)

    return prior


class PFGMPP(PreconditionedProcess):
    """PFGM++ with ``D`` augmented dimensions, EDM-preconditioned (PFGM++ §4, Algorithms 1–2).
    Views: ode, denoiser (no score: the kernel is not Gaussian, so Gaussian-noise samplers do
    not apply)."""

    Options = PFGMPPOptions
    options: PFGMPPOptions

    def validate(self) -> None:
        if not self.options.D > 0:  # also catches NaN
            D = self.options.D
            raise ConfigError(f"pfgmpp: D must be > 0 (inf for the Gaussian limit), got {D}")
        super().validate()

    def perturb(
        self, y: Tensor, sigma: Tensor, generator: Generator | None
    ) -> tuple[Tensor, Tensor]:
        D = self.options.D
        noise = pfgmpp_noise(y.shape, D, generator=generator, device=y.device, dtype=y.dtype)
        return y + append_dims(sigma, y.ndim) * noise, y  # x ~ p_r(· | y), PFGM++ eq. 4

    def prior_at(self, sigma: float) -> PriorFn:
        return _prior(sigma, self.options.D)  # the kernel at r_max = σ_max √D (PFGM++ §4)

    def prior_logp_at(self, sigma: float) -> Callable[[Tensor], Tensor]:
        return pfgmpp_prior_logp(sigma, self.options.D)
