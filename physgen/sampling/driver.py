"""The sampling driver: process + network + sampler name -> a :class:`SampleSet` with its NFE."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from physgen.core import validate as _v
from physgen.core.process import (
    Backbone,
    CountedFn,
    DenoiserView,
    GaussianProcess,
    Process,
    View,
)
from physgen.core.rng import StackedGenerator
from physgen.errors import ConfigError
from physgen.registry import Registry, get_registry, process_view
from physgen.sampling.guidance import Classifier, GuidedNet, classifier_guided
from physgen.solvers import Sampler
from physgen.solvers.grids import regrid

__all__ = ["SampleSet", "compatible_samplers", "describe_views", "resolve_sampler", "sample"]


@dataclass(frozen=True)
class SampleSet:
    """Samples and how they were made."""

    #: ``[n, *event_shape]``, on the device they were drawn on
    x: Tensor
    #: network evaluations per trajectory (max over batches; equal for fixed-step samplers)
    nfe: int
    sampler: str
    steps: int
    seed: int
    wall_seconds: float
    options: dict[str, Any] = field(default_factory=dict)
    #: guidance settings used (``scale``, ``interval``, ``classifier_scale``); empty if none
    guidance: dict[str, Any] = field(default_factory=dict)


def compatible_samplers(process: Process, registry: Registry | None = None) -> list[str]:
    """Names of the installed samplers whose view ``process`` serves with its options (an
    instance: ``otcfm``'s OT coupling, for one, takes the score view away)."""
    registry = registry or get_registry()
    views = process.views()
    return [s.name for s, _ in registry.items("samplers") if s.view in views]


def describe_views(cls: type[Process]) -> str:
    """The views of ``cls``'s default-options instance, then which options change them and
    the default sampler: the line ``physgen plugins`` and the docs print, e.g. ``ode,
    denoiser (score only with coupling=independent and source=gaussian); default sampler
    heun``."""
    process = cls()
    text = ", ".join(process.views()) or "none"
    conditions = [f"{view} {when}" for view, when in cls.view_conditions.items()]
    if conditions:
        text += f" ({'; '.join(conditions)})"
    return f"{text}; default sampler {process.default_sampler}"


def resolve_sampler(process: Process, name: str, registry: Registry | None = None) -> Sampler:
    """The sampler ``name``, checked against the views ``process`` serves with its options."""
    registry = registry or get_registry()
    sampler: Sampler = registry.sampler(name)
    if sampler.view not in process.views():
        fit = ", ".join(compatible_samplers(process, registry)) or "none"
        when = process.view_conditions.get(sampler.view)
        why = f" with these options ({sampler.view} {when})" if when else ""
        raise ConfigError(
            f"sampler {name!r} needs the {sampler.view!r} view, which process "
            f"{type(process).__name__} does not serve{why}; samplers that fit: {fit}"
        )
    return sampler


@torch.no_grad()
def sample(
    process: Process,
    net: nn.Module,
    event_shape: tuple[int, ...],
    *,
    n: int = 1024,
    sampler: str | None = None,
    steps: int = 18,
    seed: int = 0,
    batch_size: int = 4096,
    cond: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    options: dict[str, Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
    registry: Registry | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    classifier: Classifier | None = None,
    classifier_scale: float = 1.0,
    schedule: str | None = None,
    schedule_options: dict[str, Any] | None = None,
    clip_denoised: float = 0.0,
    guide: nn.Module | None = None,
) -> SampleSet:
    """Draw ``n`` samples of ``event_shape`` by integrating the reverse dynamics of ``process``.

    Sample ``i`` uses its own generator seeded from ``(seed, i)``, so it does not depend on
    ``batch_size``. ``sampler`` defaults to the process's own ``default_sampler`` (heun;
    consistency for consistency models). ``cond`` (``[n]`` class labels) conditions the
    network. ``options`` are keyword options of the sampler function (e.g. ``rtol`` for dopri5,
    ``S_churn``); strings are converted to the option's type.

    Guidance (:mod:`physgen.sampling.guidance`, every process): ``guidance`` is the classifier-free
    scale ``w`` (0 unconditional, 1 conditional, > 1 guided; needs ``cond`` and a net trained
    with label dropout), ``guidance_interval`` ``(lo, hi)`` the view times where it applies (σ,
    or t for flow-matching ODE views). ``classifier(x, sigma) -> logits`` adds
    ``classifier_scale · ∇ log p(cond | x, σ)`` to the score (score views only). ``guide``, a
    worse network of the same process (smaller or less trained), turns ``guidance`` into the
    autoguidance weight: ``F_guide + w (F_net − F_guide)`` (Karras et al. 2024), with or
    without ``cond``; check two checkpoints with
    :func:`physgen.sampling.guidance.check_guide` first.

    ``schedule`` replaces the view's σ-grid by a named schedule of
    :mod:`physgen.solvers.grids` between the same endpoints, with ``schedule_options`` (e.g.
    ``{"rho": 5}`` for ``karras``): for every fixed-step sampler on a σ-grid — denoiser and
    score samplers, and ODE solvers on a σ-frame ODE view (diffusion, PFGM++; not flow
    matching's t-grid).

    ``SampleSet.nfe`` counts network evaluations: a classifier-free guided call evaluates the
    network twice (batched), so it counts two, as does an autoguided call (both networks);
    one the guidance interval switches off, one.

    ``clip_denoised = c > 0`` clamps the denoiser's output ``D(x; σ)`` to ``[−c, c]`` (the x̂_0
    clipping of Ho et al. 2020's and Nichol & Dhariwal 2021's samplers, images in [−1, 1]):
    denoiser and score samplers, and ode samplers of a Gaussian process (its PF-ODE).
    """
    _v.check_instance("process", process, Process, "a physgen Process (physgen.get_process)")
    _v.check_instance("net", net, nn.Module, "a torch.nn.Module (physgen.get_network)")
    event_shape = _v.check_shape("event_shape", event_shape)
    n, steps = _v.check_int("n", n), _v.check_int("steps", steps)
    batch_size, seed = _v.check_int("batch_size", batch_size), _v.check_int("seed", seed, min=0)
    if sampler is not None:
        sampler = _v.check_str("sampler", sampler)
    if n < 1:
        raise ConfigError(f"n must be ≥ 1, got {n}")
    if steps < 1:
        raise ConfigError(f"steps must be ≥ 1, got {steps}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
    if cond is not None and cond.shape[0] != n:
        raise ConfigError(f"cond has {cond.shape[0]} labels for {n} samples")
    if guide is not None:
        _v.check_instance("guide", guide, nn.Module, "a torch.nn.Module (the guiding network)")
    if cond is None and ((guidance != 1.0 and guide is None) or classifier is not None):
        raise ConfigError("guidance needs class labels: pass cond ([n] ints, −1 = none)")
    sampler = sampler if sampler is not None else process.default_sampler
    spec = resolve_sampler(process, sampler, registry)
    options = spec.parse_options(options)
    if schedule is not None:
        _check_schedule(process, spec)
    if not clip_denoised >= 0:
        raise ConfigError(f"clip_denoised must be ≥ 0, got {clip_denoised}")
    clippable = spec.view in ("denoiser", "score") or isinstance(process, GaussianProcess)
    if clip_denoised and not (clippable and spec.view != "consistency"):
        raise ConfigError(f"clip_denoised applies to denoiser/score samplers, not {sampler!r}")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.eval()
    if guide is not None:
        guide.eval()
    chunks, nfe = [], 0
    start_time = time.perf_counter()
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        gen = StackedGenerator.for_samples(seed, start, count, device)
        c = cond[start : start + count].to(device) if cond is not None else None
        guided = GuidedNet(net, guidance, guidance_interval, guide=guide)
        view = _view(process, spec.view, guided, c, clip_denoised)
        if classifier is not None:
            view = classifier_guided(view, classifier, c, classifier_scale)
        grid = view.grid(steps) if hasattr(view, "grid") else view.sigmas(steps)
        if schedule is not None:
            if not bool(grid[0] > grid[-1]):  # time, not σ: flow matching's ODE view (t: 0 → 1)
                raise ConfigError(
                    f"schedule: the {spec.view} view of {type(process).__name__} runs in t, "
                    "not σ; use a denoiser sampler (e.g. dpmpp_2m) for a σ-schedule"
                )
            grid = regrid(grid, schedule, **(schedule_options or {}))
        x = view.prior((count, *event_shape), generator=gen, device=device, dtype=dtype)
        f = CountedFn(guided.timed(_view_fn(view, spec.view)))
        x = spec.fn(f, x, grid.to(device), generator=gen, **options)
        chunks.append(x)
        nfe = max(nfe, f.nfe + guided.doubled)  # a guided call is two network evaluations
        if on_batch is not None:
            on_batch(count)
    wall = time.perf_counter() - start_time
    return SampleSet(
        x=torch.cat(chunks),
        nfe=nfe,
        sampler=sampler,
        steps=steps,
        seed=seed,
        wall_seconds=wall,
        options=options,
        guidance=_guidance_record(
            cond, guidance, guidance_interval, classifier, classifier_scale, guide is not None
        ),
    )


def _view(process: Process, kind: str, net: Backbone, cond: Tensor | None, clip: float) -> View:
    """The view ``kind`` of ``process``; with ``clip > 0`` its denoiser clamped to [−clip, clip]
    (for an ode view of a Gaussian process: the PF-ODE of the clamped denoiser, EDM eq. 3)."""
    if not clip:
        return process_view(process, kind, net, cond)
    base = process_view(process, "denoiser" if kind == "ode" else kind, net, cond)
    assert isinstance(base, DenoiserView)
    denoise = base.denoise
    clipped = dataclasses.replace(base, denoise=lambda x, s: denoise(x, s).clamp(-clip, clip))
    return clipped.as_ode() if kind == "ode" else clipped


def _check_schedule(process: Process, spec: Sampler) -> None:
    """A named σ-schedule needs a fixed-step sampler on a σ-grid (one-line error otherwise)."""
    if spec.adaptive:
        raise ConfigError(
            f"schedule: sampler {spec.name!r} chooses its own steps (adaptive); "
            "a schedule applies to fixed-step samplers"
        )
    if spec.view == "consistency":
        raise ConfigError(
            f"schedule: sampler {spec.name!r} runs on consistency times, not a σ-grid"
        )


def _guidance_record(
    cond: Tensor | None,
    scale: float,
    interval: tuple[float, float] | None,
    classifier: Classifier | None,
    classifier_scale: float,
    autoguided: bool = False,
) -> dict[str, Any]:
    if cond is None and not autoguided:
        return {}
    out: dict[str, Any] = {"scale": float(scale)}
    if autoguided:
        out["autoguidance"] = True
    if interval is not None:
        out["interval"] = [float(v) for v in interval]
    if classifier is not None:
        out["classifier_scale"] = float(classifier_scale)
    return out


def _view_fn(view: Any, kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    if kind == "ode":
        return view.field
    if kind in ("denoiser", "score"):
        return view.denoise
    return view.f  # consistency f(x, σ), flow map f(x, t, s)
