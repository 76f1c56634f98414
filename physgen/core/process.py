"""The process contract: what a generative process is, and the views a sampler may ask for.

A *process* couples a forward perturbation of data with the reverse-time dynamics that
sampling integrates. physgen's core knows no process by name; each one is a plugin that
subclasses :class:`Process` and says its math in a few dozen lines.

Conventions, stated once for the whole package
----------------------------------------------
* Data ``y`` has shape ``[B, *event_shape]``; per-example quantities have shape ``[B]``.
* **Time runs from the prior to the data** on every grid a view hands out: ``grid[0]`` is the
  prior end, ``grid[-1]`` the data end. For σ-parameterised processes (diffusion, PFGM++) the
  "time" is the noise level σ itself, decreasing to 0; for flow matching it is ``t`` from 0
  (prior) to 1 (data).
* Grids are float64 (time is kept in double precision, as torchdiffeq does, so that step sizes
  of 1e-3 relative to σ_max = 80 are exact); states keep their own dtype. Fields receive time as
  a 0-dim tensor and cast it themselves.
* The **σ-frame** (Karras et al. 2022, "EDM", eq. 1 with s(t) = 1, σ(t) = t) is shared by every
  view that speaks of σ: ``x = y + σ n`` for Gaussian processes, and the PF-ODE is
  ``dx/dσ = (x − D(x; σ)) / σ``. A process whose native frame is scaled (VP: ``x_t = s(t) x``,
  flow matching: ``x_t = t x``) converts inside its view, so solvers never see the scale.
* Networks are raw backbones ``F(x, noise_label, class_labels=None) -> Tensor`` with the shape
  of ``x``. Preconditioning belongs to the process.
* Randomness flows through explicit ``torch.Generator`` objects; nothing here touches the
  global RNG.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from physgen.core.options import convert_value, option_docs, parse_options
from physgen.core.rng import Generator, randn
from physgen.errors import ConfigError

__all__ = [
    "VIEWS",
    "Backbone",
    "ConsistencyView",
    "CountedFn",
    "DenoiserView",
    "FlowMapView",
    "GaussianProcess",
    "ODEView",
    "PriorFn",
    "Process",
    "ScoreView",
    "View",
    "append_dims",
    "as_time",
    "convert_value",
    "gaussian_logp",
    "gaussian_prior",
    "karras_sigmas",
    "option_docs",
    "parse_options",
]

#: The sampling views, in the order ``physgen plugins`` lists them.
VIEWS = ("ode", "denoiser", "score", "consistency", "flowmap")


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so that ``x`` (shape ``[B]`` or ``[]``) broadcasts
    against a tensor with ``ndim`` dimensions. The one broadcast helper of the package."""
    missing = ndim - x.ndim
    if missing < 0:
        raise ValueError(f"append_dims: input has {x.ndim} dims, more than the target {ndim}")
    return x[(...,) + (None,) * missing]


class Backbone(Protocol):
    """A raw network: ``F(x, noise_label, class_labels=None)`` returns a tensor shaped like
    ``x``. ``noise_label`` has shape ``[B]``; the process chooses what it means (EDM: ln σ / 4,
    flow matching: t)."""

    def __call__(
        self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None
    ) -> Tensor: ...


class PriorFn(Protocol):
    """Draws prior samples of shape ``[n, *event_shape]`` at the grid's first point, from a
    plain or stacked generator (draw through :func:`physgen.core.rng.randn`)."""

    def __call__(
        self,
        shape: tuple[int, ...],
        *,
        generator: Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor: ...


class CountedFn:
    """Wraps a field/denoiser/consistency function and counts its evaluations (NFE).

    The sampling driver wraps every view function in one of these before handing it to a
    solver, so solvers never count by hand and every sample set reports the same quantity:
    network evaluations per trajectory (one call on a batch counts once).
    """

    def __init__(self, fn: Callable[..., Tensor]):
        self.fn = fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor, *times: Tensor) -> Tensor:
        self.nfe += 1
        return self.fn(x, t, *times)


def as_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Time/σ as a ``[B]`` tensor in the dtype and on the device of ``x``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)  # a float64 state keeps float64 t
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t


# --------------------------------------------------------------------------------------
# Views. Each is a small frozen record of callables: the field a solver integrates, the grid
# it integrates on, and the prior it starts from.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ODEView:
    """An ODE ``dx/dt = field(x, t)`` carrying the prior (``grid[0]``) to the data
    (``grid[-1]``).

    ``field(x, t)``: ``x`` ``[B, *event]``, ``t`` a 0-dim or ``[B]`` tensor; returns dx/dt.
    ``grid(steps)``: float64 tensor of ``steps + 1`` times, prior end first.
    ``prior``: draws the state at ``grid(steps)[0]``. ``prior_logp(x) -> [B]`` when known.

    When ``grid[-1] == 0`` the grid is a σ-grid ending at σ = 0, where
    ``dx/dσ = (x − D)/σ`` is 0/0: fixed-step solvers take that last interval as one Euler step
    (EDM Algorithm 1, line 8), which lands exactly on ``D(x; σ_{n−1})``.
    """

    field: Callable[[Tensor, Tensor], Tensor]
    grid: Callable[[int], Tensor]
    prior: PriorFn
    prior_logp: Callable[[Tensor], Tensor] | None = None


@dataclass(frozen=True)
class DenoiserView:
    """The denoiser ``D(x; σ) = E[y | x]`` in the σ-frame, with the PF-ODE
    ``dx/dσ = (x − D(x; σ)) / σ`` (EDM eq. 3 with σ(t) = t).

    ``denoise(x, sigma)``: ``sigma`` a 0-dim or ``[B]`` tensor. ``sigmas(steps)``: float64,
    ``steps + 1`` decreasing values ending in 0. ``prior`` draws ``x`` at ``sigmas[0]``.
    Enables exponential and multistep solvers (DPM-Solver++), distillation and guidance.
    """

    denoise: Callable[[Tensor, Tensor], Tensor]
    sigmas: Callable[[int], Tensor]
    prior: PriorFn
    prior_logp: Callable[[Tensor], Tensor] | None = None

    def as_ode(self) -> ODEView:
        """The PF-ODE of this denoiser as an :class:`ODEView` in σ (EDM eq. 3)."""
        denoise = self.denoise

        def field(x: Tensor, sigma: Tensor) -> Tensor:
            sigma = as_time(sigma, x)
            return (x - denoise(x, sigma)) / append_dims(sigma, x.ndim)

        return ODEView(field=field, grid=self.sigmas, prior=self.prior, prior_logp=self.prior_logp)


@dataclass(frozen=True)
class ScoreView(DenoiserView):
    """A :class:`DenoiserView` whose perturbation kernel is Gaussian, ``x = y + σ n``, so
    that ``∇ log p_σ(x) = (D(x; σ) − x) / σ²`` and Gaussian noise may be injected along the
    way (reverse SDE, Langevin, EDM churn, ancestral). PFGM++ has a denoiser but no score
    view: its kernel is heavy-tailed, not Gaussian."""

    def score(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = as_time(sigma, x)
        return (self.denoise(x, sigma) - x) / append_dims(sigma, x.ndim) ** 2


@dataclass(frozen=True)
class ConsistencyView:
    """A consistency function ``f(x, σ)`` mapping any point of a PF-ODE trajectory to its
    origin (Song et al. 2023, eq. 3), with ``f(x, σ_min) = x``.

    ``sigmas(steps)``: float64 ``[τ_1 = σ_max, τ_2, …, τ_steps, σ_min]`` — the times at which
    ``f`` is applied, then ``σ_min`` as the data end. ``prior`` draws ``x`` at ``σ_max``.
    """

    f: Callable[[Tensor, Tensor], Tensor]
    sigmas: Callable[[int], Tensor]
    prior: PriorFn


@dataclass(frozen=True)
class FlowMapView:
    """A flow map ``f(x, t, s)``: the state at time ``s`` of the ODE trajectory through ``x``
    at time ``t`` (Boffi, Albergo & Vanden-Eijnden 2024, "Flow map matching", eq. 2.3), with
    ``f(x, t, t) = x``. Consistency models are its special case ``s`` = data end; MeanFlow,
    shortcut models and sCM learn it for any pair of times.

    ``grid(steps)``: float64 ``steps + 1`` times, prior end first (the process's own time, as
    for :class:`ODEView`); a sampler jumps ``grid[i] → grid[i + 1]``. ``prior`` draws ``x`` at
    ``grid[0]``.
    """

    f: Callable[[Tensor, Tensor, Tensor], Tensor]
    grid: Callable[[int], Tensor]
    prior: PriorFn


#: any of the view records a process hands to samplers
View = ODEView | DenoiserView | ScoreView | ConsistencyView | FlowMapView


# --------------------------------------------------------------------------------------
# The process
# --------------------------------------------------------------------------------------


class Process(nn.Module):
    """Base class of every generative process.

    Subclasses set ``Options`` to a frozen dataclass (plain JSON-serialisable values, each
    field declared with :func:`~physgen.core.options.option`: default and help), implement
    :meth:`loss` and :meth:`noise_label`, and implement the view methods their math allows —
    ``ode``, ``denoiser``, ``score``, ``consistency`` — each ``(net, cond=None) -> View``.

    A process is an ``nn.Module`` so that training state it owns (a consistency target
    network, a distillation teacher) is saved, moved and checkpointed with the rest; most
    processes hold none.
    """

    #: The options dataclass; its defaults are the process's defaults.
    Options: ClassVar[type] = type(None)

    def __init__(self, options: Any = None, **overrides: Any):
        super().__init__()
        if options is None:
            options = parse_options(self.Options, overrides, owner=type(self).__name__)
        elif overrides:
            options = dataclasses.replace(options, **overrides)
        self.options = options
        self.validate()

    # -- what a subclass provides ------------------------------------------------------

    def validate(self) -> None:
        """Check option values; raise :class:`ConfigError` with one line naming the problem."""

    def loss(
        self,
        net: Backbone,
        y: Tensor,
        *,
        cond: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-example training loss ``[B]`` at training step ``step`` for data ``y``."""
        raise NotImplementedError

    def setup(self, net: nn.Module) -> None:
        """Create training state that depends on the network (a consistency target copy, a
        loaded teacher). Called by the trainer before the first step and before a checkpoint's
        process state is loaded; must be idempotent."""

    def after_step(self, net: nn.Module, step: int) -> None:
        """Called by the trainer after each optimizer step (e.g. a target-network EMA)."""

    # -- views ---------------------------------------------------------------------------

    #: the sampler :func:`physgen.sampling.sample` and ``physgen sample`` use when none is
    #: named; it must fit the views of every instance
    default_sampler: ClassVar[str] = "heun"
    #: for a view that some options take away, the options under which it is served (one
    #: line, shown by ``physgen plugins`` and in the error when it is refused)
    view_conditions: ClassVar[dict[str, str]] = {}

    @classmethod
    def implemented_views(cls) -> tuple[str, ...]:
        """The view methods this class implements, in :data:`VIEWS` order: the most an
        instance can serve. What an instance serves is :meth:`views`."""
        return tuple(v for v in VIEWS if getattr(cls, v) is not getattr(Process, v))

    def views(self) -> tuple[str, ...]:
        """The views this instance serves with its options, in :data:`VIEWS` order. Every
        listing reads it (``compatible_samplers``, ``physgen plugins``, the docs). A process
        whose options take a view away overrides it (flow matching has no score view under an
        OT coupling) and says when in :attr:`view_conditions`."""
        return self.implemented_views()

    def view(self, kind: str, net: Backbone, cond: Tensor | None = None) -> View:
        """The view ``kind`` of this process over ``net``; a clear error if it has none."""
        if kind not in VIEWS:
            raise ConfigError(f"unknown view {kind!r} (views: {', '.join(VIEWS)})")
        if kind not in self.views():
            when = self.view_conditions.get(kind)
            raise ConfigError(
                f"process {type(self).__name__} has no {kind!r} view"
                + (f" with these options ({kind} {when})" if when else "")
                + f" (it has: {', '.join(self.views()) or 'none'})"
            )
        return getattr(self, kind)(net, cond)

    def ode(self, net: Backbone, cond: Tensor | None = None) -> ODEView:
        raise NotImplementedError

    def denoiser(self, net: Backbone, cond: Tensor | None = None) -> DenoiserView:
        raise NotImplementedError

    def score(self, net: Backbone, cond: Tensor | None = None) -> ScoreView:
        raise NotImplementedError

    def consistency(self, net: Backbone, cond: Tensor | None = None) -> ConsistencyView:
        raise NotImplementedError

    def flowmap(self, net: Backbone, cond: Tensor | None = None) -> FlowMapView:
        raise NotImplementedError

    #: how many noise labels the backbone takes per example: 1 (a time or σ), or 2 for a
    #: flow map's pair of times; ``get_network(..., noise_labels=...)`` builds such a net
    noise_labels: ClassVar[int] = 1

    # -- conveniences ----------------------------------------------------------------------

    def options_dict(self) -> dict[str, Any]:
        """Options as a JSON-serialisable dict (``inf`` stays a float; json writes Infinity)."""
        return dataclasses.asdict(self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.options_dict().items())


class GaussianProcess(Process):
    """A process whose perturbation is Gaussian in the σ-frame (``x = y + σ n``): it implements
    :meth:`denoiser` returning a :class:`ScoreView`, and gets the ``score`` view (that same
    view) and the ``ode`` view (its PF-ODE, EDM eq. 3) from it. EDM, DDPM, VP and VE are such
    processes; PFGM++ is not (its kernel is heavy-tailed)."""

    def denoiser(self, net: Backbone, cond: Tensor | None = None) -> ScoreView:
        raise NotImplementedError

    def score(self, net: Backbone, cond: Tensor | None = None) -> ScoreView:
        return self.denoiser(net, cond)

    def ode(self, net: Backbone, cond: Tensor | None = None) -> ODEView:
        return self.denoiser(net, cond).as_ode()


def karras_sigmas(
    steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0, *, zero: bool = True
) -> Tensor:
    """EDM eq. 5: ``σ_i = (σ_max^(1/ρ) + i/(n−1) (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ`` for
    ``i = 0..n−1``, then ``σ_n = 0`` when ``zero``. float64, decreasing."""
    if steps < 1:
        raise ConfigError(f"steps must be ≥ 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ConfigError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if steps == 1:
        ramp = torch.zeros(1, dtype=torch.float64)
    else:
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    if zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas


def gaussian_prior(scale: float) -> PriorFn:
    """The prior ``N(0, scale² I)`` as a :class:`PriorFn`."""

    def prior(
        shape: tuple[int, ...],
        *,
        generator: Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        return scale * randn(shape, generator=generator, device=device, dtype=dtype)

    return prior


def gaussian_logp(scale: float) -> Callable[[Tensor], Tensor]:
    """log N(x; 0, scale² I) per example, summed over the event dims."""

    def logp(x: Tensor) -> Tensor:
        n = x[0].numel()
        sq = x.flatten(1).pow(2).sum(1)
        return -0.5 * sq / scale**2 - n * math.log(scale) - 0.5 * n * math.log(2 * math.pi)

    return logp
