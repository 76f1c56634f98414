"""Consistency training from scratch: CT (Song et al. 2023) and iCT (Song & Dhariwal 2024).

Song, Dhariwal, Chen, Sutskever (2023), "Consistency Models", Algorithm 3 and Appendix C;
Song & Dhariwal (2024), "Improved Techniques for Training Consistency Models" (ICLR), §3.
Both replace the teacher's ODE step of distillation by the one-sample estimate
``x_i = y + σ_i z`` with the same ``z`` as ``x_{i+1} = y + σ_{i+1} z`` (docs/math.md §4). The
discretisation N(k) grows with the training step ``k``; K is the option ``total_steps``,
because the trainer does not hand its step budget to the process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from physgen.core.ema import ema_update
from physgen.core.options import option
from physgen.core.process import Backbone, append_dims
from physgen.core.rng import randn_like
from physgen.errors import ConfigError
from physgen_consistency.consistency import (
    ConsistencyOptions,
    ConsistencyProcess,
    adjacent_sigmas,
    ct_ema_decay,
    ct_num_scales,
    ict_index_probs,
    ict_num_scales,
    uniform_pairs,
)

__all__ = ["CT", "ICT", "CTOptions", "ICTOptions"]


@dataclass(frozen=True)
class CTOptions(ConsistencyOptions):
    total_steps: int = option(2000, "K: training steps over which N(k) grows (the trainer's steps)")
    s0: int = option(2, "initial discretisation steps s0 of N(k)")
    s1: int = option(150, "final discretisation steps s1 of N(k)")
    mu0: float = option(0.9, "target EMA rate μ0 at N = s0")


class CT(ConsistencyProcess):
    """Consistency training from scratch (Song et al. 2023, Algorithm 3). View: consistency.

    The paper's schedule (s1 = 150, μ0 = 0.9: target EMA rate → 0.9986) was tuned for
    K = 800k steps; over a few thousand steps the slow target cannot carry the boundary
    condition up the grid and f collapses towards the data mean (benchmarks/consistency.py:
    sliced W2 0.88 on moons at 2000 steps, against 0.20 with s1 = 20). iCT has no such lag.
    """

    Options = CTOptions
    options: CTOptions

    def validate(self) -> None:
        super().validate()
        o = self.options
        if o.total_steps < 1 or not 1 <= o.s0 <= o.s1 or not 0 < o.mu0 < 1:
            raise ConfigError("ct: need total_steps ≥ 1, 1 ≤ s0 ≤ s1 and 0 < mu0 < 1")

    def num_scales(self, step: int) -> int:
        o = self.options
        return ct_num_scales(step, o.total_steps, o.s0, o.s1)

    def loss(
        self,
        net: Backbone,
        y: Tensor,
        *,
        cond: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        target = self.target_net(net)  # type: ignore[arg-type]
        sigmas = self.training_sigmas(self.num_scales(step))
        j = uniform_pairs(len(sigmas), y.shape[0], y, generator)
        sigma, sigma_next = adjacent_sigmas(sigmas, j, y)
        z = randn_like(y, generator)
        x_next = y + append_dims(sigma_next.to(y.dtype), y.ndim) * z
        x = y + append_dims(sigma.to(y.dtype), y.ndim) * z  # same z (Algorithm 3)
        with torch.no_grad():
            target_out = self.f(target, x, sigma, cond)
        return self.distance(self.f(net, x_next, sigma_next, cond), target_out)  # λ = 1

    def after_step(self, net: nn.Module, step: int) -> None:
        o = self.options
        mu = ct_ema_decay(step, o.total_steps, o.s0, o.s1, o.mu0)
        ema_update(self.target_net(net), net, mu)


@dataclass(frozen=True)
class ICTOptions(ConsistencyOptions):
    distance: str = option("pseudo_huber", 'd(·,·): iCT\'s pseudo-Huber (§3.3), or "l2"')
    total_steps: int = option(
        2000, "K: training steps over which N(k) doubles (the trainer's steps)"
    )
    s0: int = option(10, "initial discretisation steps s0 of N(k)")
    s1: int = option(1280, "final discretisation steps s1 of N(k)")
    P_mean: float = option(-1.1, "mean of the lognormal index distribution (iCT §3.5)")
    P_std: float = option(2.0, "standard deviation of the lognormal index distribution")


class ICT(ConsistencyProcess):
    """Improved consistency training (Song & Dhariwal 2024): doubling N(k), lognormal pairs,
    weight 1/(σ_{i+1} − σ_i), pseudo-Huber, target = stopgrad(θ). View: consistency."""

    Options = ICTOptions
    options: ICTOptions
    uses_target = False

    def validate(self) -> None:
        super().validate()
        o = self.options
        if o.total_steps < 1 or not 1 <= o.s0 <= o.s1 or o.P_std <= 0:
            raise ConfigError("ict: need total_steps ≥ 1, 1 ≤ s0 ≤ s1 and P_std > 0")

    def num_scales(self, step: int) -> int:
        o = self.options
        return ict_num_scales(step, o.total_steps, o.s0, o.s1)

    def loss(
        self,
        net: Backbone,
        y: Tensor,
        *,
        cond: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        o = self.options
        sigmas = self.training_sigmas(self.num_scales(step))
        probs = ict_index_probs(sigmas, o.P_mean, o.P_std).to(y.device)
        j = torch.multinomial(probs, y.shape[0], replacement=True, generator=generator)
        sigma, sigma_next = adjacent_sigmas(sigmas, j, y)
        z = randn_like(y, generator)
        x_next = y + append_dims(sigma_next.to(y.dtype), y.ndim) * z
        x = y + append_dims(sigma.to(y.dtype), y.ndim) * z
        with torch.no_grad():
            target_out = self.f(net, x, sigma, cond)  # stopgrad(θ), no EMA (iCT §3.2)
        weight = (1 / (sigma_next - sigma)).to(y.dtype)  # λ(σ_i) = 1/(σ_{i+1} − σ_i), §3.4
        return weight * self.distance(self.f(net, x_next, sigma_next, cond), target_out)
