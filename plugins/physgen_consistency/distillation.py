"""Consistency distillation (CD) from a teacher of any process with a denoiser view.

Song, Dhariwal, Chen, Sutskever (2023), "Consistency Models", Algorithm 2. The teacher is any
trained process whose ``denoiser`` view speaks the σ-frame of :mod:`physgen.core.process` — EDM,
VP/VE, PFGM++, flow matching — so its PF-ODE is ``dx/dσ = (x − D(x; σ))/σ`` whatever its own
training looked like. ``x_i`` is one step of a registered ODE solver (``ode`` view) of that
field from ``x_{i+1} = y + σ_{i+1} z`` (docs/math.md §4).

One step for a whole batch. Each example has its own interval ``[σ_{i+1}, σ_i]``, but solvers
take one grid. The step is taken in ``s ∈ [0, 1]`` with ``σ(s) = σ_{i+1} + s (σ_i − σ_{i+1})``
per example, ``dx/ds = (σ_i − σ_{i+1}) dx/dσ``: an affine change of time, under which every
Runge–Kutta step (Euler, Heun, RK4) is the same step as on the grid ``[σ_{i+1}, σ_i]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from physgen.core.ema import ema_update
from physgen.core.options import option
from physgen.core.process import Backbone, Process, append_dims
from physgen.core.rng import randn_like
from physgen.errors import ConfigError
from physgen.registry import get_registry
from physgen_consistency.consistency import (
    ConsistencyOptions,
    ConsistencyProcess,
    adjacent_sigmas,
    uniform_pairs,
)

__all__ = ["CD", "CDOptions"]


@dataclass(frozen=True)
class CDOptions(ConsistencyOptions):
    teacher: str = option("", "checkpoint of the teacher (any process with a denoiser view)")
    solver: str = option("heun", 'ODE sampler ("ode" view) of the teacher step σ_{i+1} → σ_i')
    num_scales: int = option(
        18, "N: points of the Karras grid (18 for CIFAR-10 in Song et al. 2023)"
    )
    mu: float = option(0.95, "target EMA rate μ (CIFAR-10 CD in Song et al. 2023, Table 3)")


class CD(ConsistencyProcess):
    """Consistency distillation (Song et al. 2023, Algorithm 2). View: consistency.

    The teacher is ``options.teacher`` (a checkpoint path, loaded on first use through
    :func:`physgen.load_checkpoint`) or a ``(process, net)`` pair given to
    :meth:`set_teacher`. It is held in a plain attribute, never as a submodule, so it is not
    part of the student's ``state_dict`` or checkpoint.
    """

    Options = CDOptions
    options: CDOptions

    def __init__(self, options: object = None, **overrides: object):
        super().__init__(options, **overrides)
        self._teacher: tuple[Process, nn.Module] | None = None  # a tuple: not registered

    def validate(self) -> None:
        super().validate()
        o = self.options
        if o.num_scales < 2 or not 0 <= o.mu < 1:
            raise ConfigError("cd: need num_scales ≥ 2 and 0 ≤ mu < 1")

    # -- the teacher ---------------------------------------------------------------------

    def set_teacher(self, process: Process, net: nn.Module) -> None:
        """Distil from ``net`` (put in eval mode) under ``process``, whose denoiser's σ range
        must reach the student's ``σ_max``."""
        if "denoiser" not in process.views():
            raise ConfigError(
                f"cd: the teacher process {type(process).__name__} has no denoiser view "
                f"(it has: {', '.join(process.views()) or 'none'})"
            )
        teacher_max = float(process.denoiser(net).sigmas(1)[0])
        if self.options.sigma_max > teacher_max * (1 + 1e-9):
            raise ConfigError(
                f"cd: student sigma_max={self.options.sigma_max} exceeds the teacher's "
                f"sigma_max={teacher_max}; set -o sigma_max={teacher_max}"
            )
        self._teacher = (process, net.eval())

    def teacher(self) -> tuple[Process, nn.Module]:
        """The teacher ``(process, net)``, loading ``options.teacher`` on first use. Not in
        :meth:`setup`: :func:`physgen.load_checkpoint` calls ``setup`` when a student is
        loaded to sample, which must not need the teacher's file."""
        if self._teacher is None:
            if not self.options.teacher:
                raise ConfigError(
                    "cd needs a teacher: -o teacher=CHECKPOINT, or CD.set_teacher(process, net)"
                )
            from physgen.api import load_checkpoint

            ckpt = load_checkpoint(self.options.teacher)
            self.set_teacher(ckpt.process, ckpt.ema)
        assert self._teacher is not None
        return self._teacher

    @torch.no_grad()
    def teacher_step(
        self, x_next: Tensor, sigma_next: Tensor, sigma: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        """``x_i`` from ``x_{i+1}``: one step of ``options.solver`` on the teacher's PF-ODE
        from ``σ_{i+1}`` to ``σ_i`` (``[B]`` float64 each), batched by the change of time in
        the module docstring."""
        process, net = self.teacher()
        param = next(net.parameters(), None)
        if param is not None and param.device != x_next.device:
            net.to(x_next.device)
        field = process.denoiser(net, cond).as_ode().field
        gap = sigma - sigma_next  # σ_i − σ_{i+1} < 0: the step runs towards the data

        def field_s(x: Tensor, s: Tensor) -> Tensor:
            s = torch.as_tensor(s, dtype=torch.float64, device=x.device)
            return append_dims(gap.to(x.dtype), x.ndim) * field(x, sigma_next + s * gap)

        grid = torch.tensor([0.0, 1.0], dtype=torch.float64, device=x_next.device)
        return self._solver()(field_s, x_next, grid)

    def _solver(self) -> Callable[..., Tensor]:
        spec = get_registry().sampler(self.options.solver)
        if spec.view != "ode" or spec.stochastic:
            raise ConfigError(
                f"cd: solver {spec.name!r} is not a deterministic ODE solver (view "
                f"{spec.view!r}); use one of: {', '.join(_ode_solvers()) or 'none installed'}"
            )
        return spec.fn  # type: ignore[no-any-return]

    # -- training ------------------------------------------------------------------------

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
        sigmas = self.training_sigmas(self.options.num_scales)
        j = uniform_pairs(len(sigmas), y.shape[0], y, generator)
        sigma, sigma_next = adjacent_sigmas(sigmas, j, y)
        z = randn_like(y, generator)
        x_next = y + append_dims(sigma_next.to(y.dtype), y.ndim) * z
        with torch.no_grad():
            x = self.teacher_step(x_next, sigma_next, sigma, cond)  # Algorithm 2, Φ(·; φ)
            target_out = self.f(target, x, sigma, cond)
        return self.distance(self.f(net, x_next, sigma_next, cond), target_out)  # λ = 1

    def after_step(self, net: nn.Module, step: int) -> None:
        ema_update(self.target_net(net), net, self.options.mu)


def _ode_solvers() -> list[str]:
    entries = get_registry().items("samplers")
    return [s.name for s, _ in entries if s.view == "ode" and not s.stochastic]
