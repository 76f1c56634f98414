"""Consistency models: the parameterisation, the schedules, the shared process, and sampling.

Song, Dhariwal, Chen, Sutskever (2023), "Consistency Models" (ICML) — CT, CD, Algorithm 1;
Song & Dhariwal (2024), "Improved Techniques for Training Consistency Models" (ICLR) — iCT.

A consistency function ``f(x, σ)`` maps every point of a PF-ODE trajectory
``dx/dσ = (x − D(x; σ))/σ`` (σ-frame, docs/math.md §1) to its end at ``σ_min``. Training compares
``f_θ`` at adjacent points ``σ_i < σ_{i+1}`` of a Karras grid indexed *ascending*,
``σ_min = σ_1 < … < σ_N = σ_max`` (docs/math.md §4; the sampling grids of
:mod:`physgen.core.process`
run the other way). Indices in code are 0-based: pair ``j`` is ``(σ_asc[j], σ_asc[j+1])``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from physgen.core.options import option
from physgen.core.precond import EDMCoefficients, edm_coefficients, precondition
from physgen.core.process import (
    Backbone,
    ConsistencyView,
    Process,
    gaussian_prior,
    karras_sigmas,
)
from physgen.core.rng import Generator, randn_like
from physgen.errors import ConfigError

__all__ = [
    "ConsistencyOptions",
    "ConsistencyProcess",
    "adjacent_sigmas",
    "ascending_sigmas",
    "consistency_coefficients",
    "consistency_function",
    "consistency_sampling",
    "ct_ema_decay",
    "ct_num_scales",
    "ict_index_probs",
    "ict_num_scales",
    "pseudo_huber",
    "uniform_pairs",
]

DISTANCES = ("l2", "pseudo_huber")


# --------------------------------------------------------------------------------------
# Parameterisation (Song et al. 2023, eq. 5 and Appendix C)
# --------------------------------------------------------------------------------------


def consistency_coefficients(sigma: Tensor, sigma_data: float, sigma_min: float) -> EDMCoefficients:
    """``c_skip = σ_d²/((σ − σ_min)² + σ_d²)``, ``c_out = σ_d (σ − σ_min)/√(σ² + σ_d²)``
    (Song et al. 2023, Appendix C), with EDM's ``c_in`` and ``c_noise = ln(σ)/4`` so one
    backbone serves EDM and consistency alike. At ``σ = σ_min``: ``c_skip = 1``, ``c_out = 0``
    exactly."""
    edm = edm_coefficients(sigma, sigma_data)
    shifted = sigma - sigma_min
    return EDMCoefficients(
        c_skip=sigma_data**2 / (shifted**2 + sigma_data**2),
        c_out=sigma_data * shifted / (sigma**2 + sigma_data**2).sqrt(),
        c_in=edm.c_in,
        c_noise=edm.c_noise,
    )


def consistency_function(
    net: Backbone,
    x: Tensor,
    sigma: Tensor | float,
    sigma_data: float,
    sigma_min: float,
    class_labels: Tensor | None = None,
) -> Tensor:
    """``f_θ(x, σ) = c_skip(σ) x + c_out(σ) F_θ(c_in x, c_noise)`` (Song et al. 2023, eq. 5).
    ``x`` ``[B, *event]``, ``sigma`` 0-dim or ``[B]``; ``f_θ(x, σ_min) = x`` exactly."""

    def coefficients(s: Tensor) -> EDMCoefficients:
        return consistency_coefficients(s, sigma_data, sigma_min)

    return precondition(net, x, sigma, coefficients, class_labels)


# --------------------------------------------------------------------------------------
# Discretisation schedules (docs/math.md §4)
# --------------------------------------------------------------------------------------


def ct_num_scales(k: int, K: int, s0: int = 2, s1: int = 150) -> int:
    """CT's N(k) = ⌈√(k/K ((s1 + 1)² − s0²) + s0²) − 1⌉ + 1 (Song et al. 2023, Appendix C),
    with ``k`` clamped to ``K`` so training past K keeps N = s1 + 1."""
    frac = min(max(k, 0), K) / K
    return math.ceil(math.sqrt(frac * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1


def ct_ema_decay(k: int, K: int, s0: int = 2, s1: int = 150, mu0: float = 0.9) -> float:
    """CT's target EMA rate μ(k) = exp(s0 ln μ0 / N(k)) (Song et al. 2023, Appendix C)."""
    return math.exp(s0 * math.log(mu0) / ct_num_scales(k, K, s0, s1))


def ict_num_scales(k: int, K: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's N(k) = min(s0 2^⌊k/K'⌋, s1) + 1, K' = ⌊K / (log2⌊s1/s0⌋ + 1)⌋ (Song & Dhariwal
    2024, §3.4); K' is at least 1."""
    K_prime = max(1, math.floor(K / (math.log2(s1 // s0) + 1)))
    doublings = min(max(k, 0) // K_prime, 62)  # 2**62·s0 is past any s1; avoids huge ints
    return min(s0 * 2**doublings, s1) + 1


def ascending_sigmas(N: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """The Karras grid (EDM eq. 5) with ``N`` points, ascending: ``σ_min = σ_1 < … < σ_N =
    σ_max``. float64."""
    return karras_sigmas(N, sigma_min, sigma_max, rho, zero=False).flip(0)


def ict_index_probs(sigmas: Tensor, P_mean: float = -1.1, P_std: float = 2.0) -> Tensor:
    """iCT's lognormal discretisation: ``p(i) ∝ erf((ln σ_{i+1} − P_mean)/(√2 P_std)) −
    erf((ln σ_i − P_mean)/(√2 P_std))`` over the ``N − 1`` pairs of the ascending grid
    ``sigmas`` (Song & Dhariwal 2024, §3.5). float64 ``[N − 1]``, summing to 1."""
    cdf = torch.erf((sigmas.double().log() - P_mean) / (math.sqrt(2) * P_std))
    mass = cdf[1:] - cdf[:-1]
    return mass / mass.sum()


# --------------------------------------------------------------------------------------
# Distances and the target network
# --------------------------------------------------------------------------------------


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """``√(‖a − b‖² + c²) − c`` per example (Song & Dhariwal 2024, eq. 8), computed as
    ``‖a − b‖² / (√(‖a − b‖² + c²) + c)`` so that tiny differences do not cancel. ``[B]``."""
    sq = (a - b).flatten(1).pow(2).sum(1)
    return sq / ((sq + c**2).sqrt() + c)


# --------------------------------------------------------------------------------------
# Sampling (Song et al. 2023, Algorithm 1)
# --------------------------------------------------------------------------------------


def consistency_sampling(
    f: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    grid: Tensor,
    *,
    generator: Generator | None = None,
    on_step: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1). ``grid`` is
    ``[τ_1 = σ_max, τ_2, …, τ_steps, σ_min]`` and ``x`` the prior draw at ``τ_1``:
    ``x ← f(x, τ_1)``, then for each later τ, ``x ← f(x + √(τ² − σ_min²) z, τ)``. One
    evaluation of ``f`` per τ; with one step it is the deterministic ``f(σ_max z, σ_max)``."""
    sigma_min = grid[-1]
    taus = grid[:-1]
    for i, tau in enumerate(taus):
        if i > 0:
            x = x + float((tau**2 - sigma_min**2).sqrt()) * randn_like(x, generator)
        x = f(x, tau)
        if on_step is not None:
            on_step(i, x)
    return x


# --------------------------------------------------------------------------------------
# The processes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsistencyOptions:
    sigma_data: float = option(0.5, "σ_d of the parameterisation (0.5 for images in [-1, 1])")
    sigma_min: float = option(0.002, "σ_min: the boundary f(x, σ_min) = x")
    sigma_max: float = option(80.0, "σ_max; the prior is N(0, σ_max² I)")
    rho: float = option(7.0, "curvature ρ of the Karras grids (training and multistep τ's)")
    sigma_mid: float = option(0.821, "τ_2 of multistep sampling (iCT's two-step σ_mid on CIFAR-10)")
    distance: str = option("l2", 'd(·,·): "l2" (mean squared error) or "pseudo_huber"')
    huber_c: float = option(0.00054, "pseudo-Huber c = huber_c √N for N data dims (iCT §3.3)")


class ConsistencyProcess(Process):
    """What CT, iCT and CD share: the parameterisation, the ``consistency`` view, the distance
    and the EMA target network. Subclasses implement :meth:`loss`."""

    Options = ConsistencyOptions
    options: ConsistencyOptions
    #: whether the process keeps an EMA target network θ⁻ (CT, CD) or uses stopgrad(θ) (iCT)
    uses_target = True
    #: its one view's sampler (Song et al. 2023, Algorithm 1)
    default_sampler = "consistency"

    def __init__(self, options: object = None, **overrides: object):
        super().__init__(options, **overrides)
        self.target: nn.Module | None = None

    def validate(self) -> None:
        o, name = self.options, type(self).__name__.lower()
        if o.sigma_data <= 0 or o.rho <= 0 or o.huber_c <= 0:
            raise ConfigError(f"{name}: sigma_data, rho and huber_c must be positive")
        if not 0 < o.sigma_min < o.sigma_mid < o.sigma_max < math.inf:
            raise ConfigError(
                f"{name}: need 0 < sigma_min < sigma_mid < sigma_max < inf, "
                f"got {o.sigma_min}, {o.sigma_mid}, {o.sigma_max}"
            )
        if o.distance not in DISTANCES:
            raise ConfigError(f"{name}: distance must be one of {DISTANCES}, got {o.distance!r}")

    # -- training state ------------------------------------------------------------------

    def setup(self, net: nn.Module) -> None:
        """The target network θ⁻ starts as a copy of θ (Song et al. 2023, Algorithm 2/3). It is
        a submodule, so checkpoints keep it; calling again keeps the existing copy."""
        if self.uses_target and self.target is None:
            self.target = copy.deepcopy(net).requires_grad_(False)

    def target_net(self, net: nn.Module) -> nn.Module:
        """θ⁻, created from ``net`` on first use if the trainer did not call :meth:`setup`."""
        if self.target is None:
            self.setup(net)
        assert self.target is not None
        return self.target

    # -- the pieces of every consistency loss -----------------------------------------------

    def f(self, net: Backbone, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        """``f_θ(x, σ)`` with this process's parameterisation."""
        o = self.options
        return consistency_function(net, x, sigma, o.sigma_data, o.sigma_min, cond)

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        """``d(a, b)`` per example ``[B]``: mean squared error, or pseudo-Huber with
        ``c = huber_c √N``."""
        if self.options.distance == "l2":
            return (a - b).pow(2).flatten(1).mean(1)
        return pseudo_huber(a, b, self.options.huber_c * math.sqrt(a[0].numel()))

    def training_sigmas(self, N: int) -> Tensor:
        """The ascending Karras grid with ``N`` points (docs/math.md §4)."""
        o = self.options
        return ascending_sigmas(N, o.sigma_min, o.sigma_max, o.rho)

    # -- the view ------------------------------------------------------------------------------

    def sampling_sigmas(self, steps: int) -> Tensor:
        """``[τ_1 = σ_max, τ_2, …, τ_steps, σ_min]``, float64: ``τ_2 = sigma_mid``, and
        ``τ_2 … τ_steps, σ_min`` Karras-spaced (ρ) between ``sigma_mid`` and ``σ_min``. Two
        steps give iCT's two-step schedule ``[σ_max, σ_mid]`` (Song & Dhariwal 2024, §5)."""
        o = self.options
        if steps < 1:
            raise ConfigError(f"steps must be ≥ 1, got {steps}")
        head = torch.tensor([o.sigma_max], dtype=torch.float64)
        if steps == 1:
            return torch.cat([head, head.new_tensor([o.sigma_min])])
        tail = karras_sigmas(steps, o.sigma_min, o.sigma_mid, o.rho, zero=False)
        tail[0], tail[-1] = o.sigma_mid, o.sigma_min  # exactly, whatever the power rounds to
        return torch.cat([head, tail])

    def consistency(self, net: Backbone, cond: Tensor | None = None) -> ConsistencyView:
        return ConsistencyView(
            f=lambda x, sigma: self.f(net, x, sigma, cond),
            sigmas=self.sampling_sigmas,
            prior=gaussian_prior(self.options.sigma_max),
        )


def uniform_pairs(N: int, batch: int, y: Tensor, generator: Generator | None) -> Tensor:
    """Pair indices ``j ~ U{0, …, N − 2}`` ``[B]`` (Song et al. 2023, Algorithm 2/3)."""
    return torch.randint(0, N - 1, (batch,), generator=generator, device=y.device)  # type: ignore[arg-type]


def adjacent_sigmas(sigmas: Tensor, j: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(σ_i, σ_{i+1})`` for pair indices ``j``, float64 ``[B]`` on the device of ``y``."""
    sigmas = sigmas.to(y.device)
    return sigmas[j], sigmas[j + 1]
