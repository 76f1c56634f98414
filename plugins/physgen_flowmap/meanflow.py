"""MeanFlow: the average velocity of the flow-matching ODE, learned from scratch, for one- and
few-step generation.

Reference: Geng, Deng, Bai, Kolter, He (2025), "Mean Flows for One-step Generative Modeling".
Their time runs from data (0) to noise (1); physgen's flow-matching time runs from the prior
(``t = 0``) to the data (``t = 1``) (:mod:`physgen.core.process`), so the equations below are
theirs with the direction of time reversed.

* Path (Liu et al. 2023, eq. 1): ``x_t = (1 − t) x_0 + t x_1``, ``x_0 ~ N(0, I)``, ``x_1`` data;
  conditional velocity ``v = x_1 − x_0``.
* Average velocity over ``[t, s]`` (MeanFlow eq. 3):
  ``u(x_t, t, s) = 1/(s − t) ∫_t^s v(x_τ, τ) dτ``, so the flow map is
  ``f(x, t, s) = x + (s − t) u(x, t, s)`` and ``f(x, t, t) = x``.
* The MeanFlow identity (eq. 6, time reversed): differentiating ``(s − t) u = ∫_t^s v dτ`` in
  ``t`` along the trajectory gives ``u = v + (s − t) du/dt`` with the total derivative
  ``du/dt = ∂_x u · v + ∂_t u`` (eq. 8): one Jacobian-vector product with tangent ``(v, 1, 0)``.
* Loss (eq. 9–10): ``‖u_θ − sg(u_tgt)‖²`` with ``u_tgt = v + (s − t) du_θ/dt``, weighted
  adaptively by ``sg(1 / (‖Δ‖² + c)^p)`` (§4.3); a fraction ``1 − ratio`` of examples has
  ``s = t``, where the target is the plain flow-matching velocity (Table 1a).
* The backbone reads two noise labels, ``(t, s − t)`` (§4.3: "(t, t − r)").

The JVP runs through ``torch.func.jvp`` (forward-mode AD); ``jvp="fd"`` uses a central finite
difference instead, for backbones or wrappers forward mode does not support (a DDP-wrapped
module, some fused attention kernels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from physgen.core.process import (
    Backbone,
    FlowMapView,
    ODEView,
    Process,
    append_dims,
    as_time,
    gaussian_logp,
    gaussian_prior,
)
from physgen.core.rng import randn_like
from physgen.errors import ConfigError

__all__ = ["MeanFlow", "MeanFlowOptions"]

JVP_MODES = ("autograd", "fd")


@dataclass(frozen=True)
class MeanFlowOptions:
    logit_mean: float = -0.4  # mean of logit(t) for both training times (MeanFlow Table 1d)
    logit_std: float = 1.0  # std of logit(t) (MeanFlow Table 1d)
    ratio: float = 0.25  # fraction of examples with s ≠ t (MeanFlow Table 1a)
    adaptive_p: float = 1.0  # power p of the adaptive weight 1/(‖Δ‖² + c)^p (0: plain L2)
    adaptive_c: float = 1e-3  # c of the adaptive weight (MeanFlow §4.3)
    jvp: str = "autograd"  # du/dt by forward-mode AD ("autograd") or finite differences ("fd")
    fd_eps: float = 1e-3  # central-difference step of jvp = "fd"


class MeanFlow(Process):
    """MeanFlow on the linear flow-matching path. Views: ``flowmap`` (``f(x, t, s)``, any
    number of jumps) and ``ode`` (the instantaneous velocity ``u(x, t, t)``, so every ODE
    sampler and the exact likelihood apply too)."""

    Options = MeanFlowOptions
    options: MeanFlowOptions
    noise_labels = 2

    def validate(self) -> None:
        o = self.options
        checks = [
            (0 <= o.ratio <= 1, f"ratio must be in [0, 1], got {o.ratio}"),
            (o.logit_std > 0 and math.isfinite(o.logit_mean),
             "need logit_std > 0 and a finite logit_mean"),
            (o.adaptive_p >= 0 and o.adaptive_c > 0,
             f"need adaptive_p ≥ 0 and adaptive_c > 0, got {o.adaptive_p}, {o.adaptive_c}"),
            (o.jvp in JVP_MODES, f"jvp must be one of {', '.join(JVP_MODES)}, got {o.jvp!r}"),
            (0 < o.fd_eps < 0.1, f"fd_eps must be in (0, 0.1), got {o.fd_eps}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"MeanFlow: {message}")

    # -- the network's average velocity -----------------------------------------------------

    def average_velocity(
        self, net: Backbone, x: Tensor, t: Tensor, s: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        """``u_θ(x, t, s)``: the backbone with noise labels ``(t, s − t)`` (MeanFlow §4.3)."""
        t, s = as_time(t, x), as_time(s, x)
        return net(x, torch.stack([t, s - t], dim=1), cond)

    def total_derivative(
        self, net: Backbone, x: Tensor, t: Tensor, s: Tensor, v: Tensor, cond: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(u_θ(x, t, s), du_θ/dt)`` along the path, ``du/dt = ∂_x u · v + ∂_t u`` (MeanFlow
        eq. 8): one JVP with tangent ``(v, 1, 0)``, or a central difference (``jvp="fd"``)."""

        def u(x_: Tensor, t_: Tensor, s_: Tensor) -> Tensor:
            return self.average_velocity(net, x_, t_, s_, cond)

        if self.options.jvp == "autograd":
            ones, zeros = torch.ones_like(t), torch.zeros_like(s)
            out, dudt = torch.func.jvp(u, (x, t, s), (v, ones, zeros))
            return out, dudt.detach()
        eps = self.options.fd_eps
        with torch.no_grad():
            dt = append_dims(torch.full_like(t, eps), x.ndim)
            ahead = u(x + dt * v, t + eps, s)
            behind = u(x - dt * v, t - eps, s)
        return u(x, t, s), (ahead - behind) / (2 * eps)

    # -- training -------------------------------------------------------------------------

    def sample_times(self, n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """``[2, B]``: ``t ≤ s`` from two logit-normal draws, ``s = t`` for a fraction
        ``1 − ratio`` of the rows (MeanFlow Table 1a)."""
        o, device, dtype = self.options, like.device, like.dtype
        normal = torch.randn(2, n, generator=generator, device=device, dtype=dtype)
        times = torch.sigmoid(o.logit_mean + o.logit_std * normal).sort(dim=0).values
        t, s = times[0], times[1]
        same = torch.rand(n, generator=generator, device=device, dtype=dtype) >= o.ratio
        return torch.stack([torch.where(same, s, t), s])

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
        x0 = randn_like(y, generator)
        t, s = self.sample_times(y.shape[0], generator, y)
        x_t = (1 - append_dims(t, y.ndim)) * x0 + append_dims(t, y.ndim) * y
        v = y - x0
        u, dudt = self.total_derivative(net, x_t, t, s, v, cond)
        target = (v + append_dims(s - t, y.ndim) * dudt).detach()  # MeanFlow eq. 10, reversed
        sq = (u.float() - target.float()).pow(2).flatten(1).sum(1)
        weight = (sq.detach() + o.adaptive_c) ** -o.adaptive_p  # adaptive weight (§4.3)
        return weight * sq

    # -- views ----------------------------------------------------------------------------

    def flowmap(self, net: Backbone, cond: Tensor | None = None) -> FlowMapView:
        def f(x: Tensor, t: Tensor, s: Tensor) -> Tensor:
            u = self.average_velocity(net, x, t, s, cond)
            gap = as_time(s, x) - as_time(t, x)
            return x + append_dims(gap, x.ndim) * u  # f(x, t, s) = x + (s − t) u (eq. 3)

        return FlowMapView(f=f, grid=_uniform_grid, prior=gaussian_prior(1.0))

    def ode(self, net: Backbone, cond: Tensor | None = None) -> ODEView:
        return ODEView(
            field=lambda x, t: self.average_velocity(net, x, t, t, cond),  # u(x, t, t) = v
            grid=_uniform_grid,
            prior=gaussian_prior(1.0),
            prior_logp=gaussian_logp(1.0),
        )


def _uniform_grid(steps: int) -> Tensor:
    """``steps + 1`` uniform times from the prior (0) to the data (1), float64."""
    if steps < 1:
        raise ConfigError(f"steps must be ≥ 1, got {steps}")
    return torch.linspace(0, 1, steps + 1, dtype=torch.float64)
