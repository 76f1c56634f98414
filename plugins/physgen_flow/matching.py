"""Flow matching on the linear path: I-CFM, minibatch OT-CFM and rectified flow.

References
----------
* Lipman, Chen, Ben-Hamu, Nickel, Le (2023), "Flow Matching for Generative Modeling":
  eq. 20–23 (the OT path ``μ_t = t x_1``, ``σ_t = 1 − (1 − σ_min) t``, its flow and the CFM loss).
* Liu, Gong, Liu (2023), "Flow Straight and Fast: Learning to Generate and Transfer Data with
  Rectified Flow": eq. 1 (``X_t = t X_1 + (1 − t) X_0``, target ``X_1 − X_0``), reflow.
* Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf, Bengio (2024), "Improving and
  Generalizing Flow-Based Generative Models with Minibatch Optimal Transport" (TMLR): eq. 14–15
  (I-CFM: path ``t x_1 + (1 − t) x_0``, target ``x_1 − x_0``, any source), eq. 17 (OT-CFM).

Convention (see :mod:`physgen.core.process`): ``t`` runs from 0 (prior, ``x_0``) to 1 (data,
``x_1``). The raw backbone's noise label is ``t`` itself, unscaled (in [0, 1], comparable to
EDM's ``ln σ / 4``); the backbone's output is the velocity ``v_θ(x_t, t)``.

The σ-frame (docs/math.md §3). ``x_t / t = x_1 + σ x_0`` with ``σ(t) = (1 − (1 − σ_min) t) / t``, so
``t = 1 / (σ + 1 − σ_min)``; the denoiser is the predicted data ``x̂_1 = E[x_1 | x_t] =
(1 − (1 − σ_min) t) v + (1 − σ_min) x_t`` (``x_t + (1 − t) v`` at σ_min = 0), for any coupling,
and ``dx̃/dσ = (x̃ − D)/σ`` is the flow-matching ODE after this change of variables. The
``score`` view further needs ``x_0 ~ N(0, I)`` independent of ``x_1`` (Tweedie); it is refused
for OT/Sinkhorn couplings, reflow pairs and non-Gaussian sources, whose ``x_t`` is not a
Gaussian perturbation of the data.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from physgen.core.options import option
from physgen.core.process import (
    Backbone,
    DenoiserView,
    ODEView,
    PriorFn,
    Process,
    ScoreView,
    append_dims,
    as_time,
    gaussian_logp,
)
from physgen.core.rng import Generator, StackedGenerator, randn
from physgen.errors import ConfigError

__all__ = [
    "FlowMatching",
    "FlowMatchingOptions",
    "OTFlowMatching",
    "OTFlowMatchingOptions",
    "PathSample",
    "RectifiedFlow",
    "RectifiedFlowOptions",
    "linear_path",
    "source_prior",
]

TIME_SAMPLING = ("uniform", "logit_normal")


@dataclass(frozen=True)
class PathSample:
    """A point of the conditional path and its target velocity."""

    #: ``[B, *event]``, the path at time ``t``
    x_t: Tensor
    #: ``[B, *event]``, the target ``u = d x_t / dt``
    velocity: Tensor
    #: ``[B]``, the time of each example
    t: Tensor


def linear_path(x0: Tensor, x1: Tensor, t: Tensor, sigma_min: float = 0.0) -> PathSample:
    """``x_t = (1 − (1 − σ_min) t) x_0 + t x_1`` (Lipman eq. 22; Liu eq. 1 and Tong eq. 14 at
    σ_min = 0) with target ``u = x_1 − (1 − σ_min) x_0`` (Lipman eq. 23; Tong eq. 15).
    ``t`` is ``[B]``."""
    tt = append_dims(t, x1.ndim)
    x_t = (1 - (1 - sigma_min) * tt) * x0 + tt * x1
    return PathSample(x_t=x_t, velocity=x1 - (1 - sigma_min) * x0, t=t)


# --------------------------------------------------------------------------------------
# The source distribution x_0
# --------------------------------------------------------------------------------------


def source_prior(source: str, scale: float = 1.0) -> PriorFn:
    """``scale · x_0`` with ``x_0 ~ N(0, I)`` (``source="gaussian"``) or a registered dataset
    (Tong et al. 2024's 8gaussians → moons). A :class:`~physgen.core.rng.StackedGenerator` draws
    row ``i`` from its own generator, so a draw does not depend on the batch it is in."""

    def prior(
        shape: tuple[int, ...],
        *,
        generator: Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        if source == "gaussian":
            return scale * randn(shape, generator=generator, device=device, dtype=dtype)
        from physgen.data import load_dataset

        def draw(n: int, g: torch.Generator | None) -> Tensor:
            dev = g.device if g is not None else None
            seed = int(torch.randint(2**62, (), generator=g, device=dev))
            return load_dataset(source, n, seed=seed).x

        if isinstance(generator, StackedGenerator):
            x = torch.cat([draw(1, g) for g in generator.generators])
        else:
            x = draw(shape[0], generator)
        if tuple(x.shape) != tuple(shape):
            shapes = f"{list(x.shape[1:])}, not {list(shape[1:])}"
            raise ConfigError(f"source {source!r} draws examples of shape {shapes}")
        return scale * x.to(device=device, dtype=dtype)

    return prior


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathOptions:
    sigma_min: float = option(
        0.0, "Lipman's path width at t = 1 (0: the straight path of Liu et al.)"
    )
    time_sampling: str = option("uniform", 'law of t in training: "uniform" or "logit_normal"')
    logit_mean: float = option(0.0, 'mean of logit(t) when time_sampling = "logit_normal"')
    logit_std: float = option(1.0, 'std of logit(t) when time_sampling = "logit_normal"')
    source: str = option(
        "gaussian", 'law of x_0: "gaussian" (N(0, I)) or a registered dataset name'
    )
    t_min: float = option(
        1e-3, "t at the first σ of the denoiser/score grid: σ_max = (1 − t_min)/t_min"
    )


@dataclass(frozen=True)
class FlowMatchingOptions(PathOptions):
    coupling: str = option(
        "independent", "pairing of prior and data batches: independent, ot, sinkhorn"
    )
    coupling_reg: float = option(0.05, "entropic ε over the mean cost, for couplings taking reg")


@dataclass(frozen=True)
class OTFlowMatchingOptions(FlowMatchingOptions):
    coupling: str = option("ot", "pairing of prior and data batches: independent, ot, sinkhorn")


@dataclass(frozen=True)
class RectifiedFlowOptions(PathOptions):
    pairs: str = option(
        "", "reflow pair file (z, x) written by physgen.sampling.reflow; train on it too"
    )


# --------------------------------------------------------------------------------------
# The processes
# --------------------------------------------------------------------------------------


class FlowMatching(Process):
    """Conditional flow matching on the linear path; the coupling is an option.
    Views: ode, denoiser, and score with an independent coupling from a Gaussian source."""

    Options = FlowMatchingOptions
    options: PathOptions
    view_conditions: ClassVar[dict[str, str]] = {
        "score": "only with coupling=independent and source=gaussian"
    }

    def __init__(self, options: Any = None, **overrides: Any):
        super().__init__(options, **overrides)
        self._coupling: Any = None  # built on first use (not a module: nothing to checkpoint)

    def validate(self) -> None:
        o, name = self.options, type(self).__name__
        if not 0 <= o.sigma_min < 1:
            raise ConfigError(f"{name}: sigma_min must be in [0, 1), got {o.sigma_min}")
        if o.time_sampling not in TIME_SAMPLING:
            raise ConfigError(
                f"{name}: time_sampling must be one of {', '.join(TIME_SAMPLING)}, "
                f"got {o.time_sampling!r}"
            )
        if not (o.logit_std > 0 and math.isfinite(o.logit_mean)):
            raise ConfigError(f"{name}: need logit_std > 0 and a finite logit_mean")
        if not 0 < o.t_min < 1:
            raise ConfigError(f"{name}: t_min must be in (0, 1), got {o.t_min}")
        if o.source != "gaussian":
            from physgen.registry import get_registry

            if o.source not in get_registry().names("datasets"):
                known = ", ".join(["gaussian", *get_registry().names("datasets")])
                raise ConfigError(f"{name}: unknown source {o.source!r} (sources: {known})")
        if isinstance(o, FlowMatchingOptions):
            from physgen.registry import get_registry

            get_registry().coupling(o.coupling)  # a one-line error listing the couplings
            if not o.coupling_reg > 0:
                raise ConfigError(f"{name}: coupling_reg must be > 0, got {o.coupling_reg}")

    # -- the pieces ------------------------------------------------------------------------

    @property
    def coupling(self) -> Any:
        """The coupling object, built from the registry on first use."""
        if self._coupling is None:
            self._coupling = self._make_coupling()
        return self._coupling

    def _make_coupling(self) -> Any:
        from physgen.registry import get_registry

        o = self.options
        assert isinstance(o, FlowMatchingOptions)
        factory = get_registry().coupling(o.coupling).factory
        params = inspect.signature(factory).parameters
        return factory(**({"reg": o.coupling_reg} if "reg" in params else {}))

    def sample_t(self, n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """Training times ``[B]``: U[0, 1], or logit-normal ``σ(m + s ε)`` (Esser et al. 2024)."""
        o, device, dtype = self.options, like.device, like.dtype
        if o.time_sampling == "uniform":
            return torch.rand(n, generator=generator, device=device, dtype=dtype)
        normal = torch.randn(n, generator=generator, device=device, dtype=dtype)
        return torch.sigmoid(o.logit_mean + o.logit_std * normal)

    def velocity(self, net: Backbone, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``v_θ(x, t)``: the backbone with noise label ``t``."""
        return net(x, as_time(t, x), cond)

    def loss(
        self,
        net: Backbone,
        y: Tensor,
        *,
        cond: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        x0 = source_prior(self.options.source)(
            tuple(y.shape), generator=generator, device=y.device, dtype=y.dtype
        )
        x0, x1 = self.coupling(x0, y, generator)  # keeps y's rows (and cond) in place
        path = linear_path(x0, x1, self.sample_t(y.shape[0], generator, y), self.options.sigma_min)
        v = self.velocity(net, path.x_t, path.t, cond)
        return (v - path.velocity).pow(2).flatten(1).mean(1)  # Lipman eq. 23, per example

    # -- the σ-frame -----------------------------------------------------------------------

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """``t = 1 / (σ + 1 − σ_min)``, clamped to t ≤ 1 (σ below σ_min is off the path)."""
        return (1 / (sigma + 1 - self.options.sigma_min)).clamp(max=1)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """``σ = (1 − (1 − σ_min) t) / t``: ``x_t / t = x_1 + σ x_0``."""
        return (1 - (1 - self.options.sigma_min) * t) / t

    def sigmas(self, steps: int) -> Tensor:
        """Decreasing float64 σ-grid: ``t`` uniform on ``[t_min, 1]`` mapped to σ, the last
        point (σ_min) replaced by 0. Euler on it is Euler in ``t`` on the ODE view."""
        if steps < 1:
            raise ConfigError(f"steps must be ≥ 1, got {steps}")
        t = torch.linspace(self.options.t_min, 1, steps + 1, dtype=torch.float64)
        sigma = self.t_to_sigma(t)
        sigma[-1] = 0
        return sigma

    def sigma_max(self) -> float:
        return float(self.t_to_sigma(torch.tensor(self.options.t_min, dtype=torch.float64)))

    # -- views -----------------------------------------------------------------------------

    def ode(self, net: Backbone, cond: Tensor | None = None) -> ODEView:
        gaussian = self.options.source == "gaussian"
        return ODEView(
            field=lambda x, t: self.velocity(net, x, t, cond),
            grid=lambda steps: torch.linspace(0, 1, steps + 1, dtype=torch.float64),
            prior=source_prior(self.options.source),
            prior_logp=gaussian_logp(1.0) if gaussian else None,
        )

    def denoiser(self, net: Backbone, cond: Tensor | None = None) -> DenoiserView:
        lag = 1 - self.options.sigma_min

        def denoise(x: Tensor, sigma: Tensor) -> Tensor:
            sigma = torch.as_tensor(sigma, device=x.device)
            t = as_time(self.sigma_to_t(sigma.to(torch.float64)), x)
            x_t = append_dims(t, x.ndim) * x  # x_t = t x̃
            v = self.velocity(net, x_t, t, cond)
            return append_dims(1 - lag * t, x.ndim) * v + lag * x_t  # x̂_1 (docs/math.md §3)

        sigma_max, gaussian = self.sigma_max(), self.options.source == "gaussian"
        # A ScoreView only where x̃ = x_1 + σ x_0 is a Gaussian perturbation (module docstring).
        kind = DenoiserView if self._not_gaussian_perturbation() else ScoreView
        return kind(
            denoise=denoise,
            sigmas=self.sigmas,
            prior=source_prior(self.options.source, sigma_max),  # x̃ ≈ σ_max x_0 at t_min
            prior_logp=gaussian_logp(sigma_max) if gaussian else None,
        )

    def views(self) -> tuple[str, ...]:
        """ode and denoiser; score too where ``x_t/t`` is a Gaussian perturbation of the data
        (an independent coupling from a Gaussian source, module docstring)."""
        views = super().views()
        if self._not_gaussian_perturbation():
            views = tuple(v for v in views if v != "score")
        return views

    def score(self, net: Backbone, cond: Tensor | None = None) -> ScoreView:
        reason = self._not_gaussian_perturbation()
        if reason:
            raise ConfigError(
                f"{type(self).__name__} has no score view here: {reason}, so x_t/t is not a "
                "Gaussian perturbation of the data; use an ode or denoiser sampler"
            )
        view = self.denoiser(net, cond)
        assert isinstance(view, ScoreView)
        return view

    def _not_gaussian_perturbation(self) -> str:
        if self.options.source != "gaussian":
            return f"the source is {self.options.source!r}, not N(0, I)"
        if not getattr(self.coupling, "independent", False):
            return f"the coupling {self.coupling!r} makes x_0 depend on x_1"
        return ""


class OTFlowMatching(FlowMatching):
    """OT-CFM: :class:`FlowMatching` whose default coupling is minibatch exact OT."""

    Options = OTFlowMatchingOptions


class RectifiedFlow(FlowMatching):
    """Rectified flow trained on stored reflow pairs ``(z, x = ODE(z))`` (Liu et al. 2023).

    The data set is the pair file's data half ``x``; the coupling looks up each batch row's
    stored noise ``z`` (:class:`~physgen_flow.couplings.PairCoupling`), loaded from
    ``options.pairs`` on first use, so loading a checkpoint to sample never needs the file.
    """

    Options = RectifiedFlowOptions  # type: ignore[assignment]
    options: RectifiedFlowOptions
    view_conditions: ClassVar[dict[str, str]] = {}  # reflow pairs: never a score view

    def _make_coupling(self) -> Any:
        from physgen_flow.couplings import load_pair_coupling

        if not self.options.pairs:
            raise ConfigError(
                "rectified needs its reflow pairs: -o pairs=PAIRS.npz (from reflow_dataset), "
                "with the same file as the dataset"
            )
        return load_pair_coupling(self.options.pairs, source=self.options.source)

    def _not_gaussian_perturbation(self) -> str:
        return "reflow pairs make x_0 a function of x_1"
