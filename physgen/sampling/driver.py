"""The sampling driver: process + network + sampler name -> a :class:`SampleSet` with its NFE."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from physgen.core.process import CountedFn, Process
from physgen.core.rng import StackedGenerator
from physgen.errors import ConfigError
from physgen.registry import Registry, get_registry
from physgen.sampling.guidance import Classifier, GuidedNet, classifier_guided
from physgen.solvers import Sampler
from physgen.solvers.grids import regrid

__all__ = ["SampleSet", "compatible_samplers", "resolve_sampler", "sample"]


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
    """Names of the installed samplers whose view ``process`` provides."""
    registry = registry or get_registry()
    views = process.views()
    return [s.name for s, _ in registry.items("samplers") if s.view in views]


def resolve_sampler(process: Process, name: str, registry: Registry | None = None) -> Sampler:
    """The sampler ``name``, checked against the views ``process`` provides."""
    registry = registry or get_registry()
    sampler: Sampler = registry.sampler(name)
    if sampler.view not in process.views():
        fit = ", ".join(compatible_samplers(process, registry)) or "none"
        raise ConfigError(
            f"sampler {name!r} needs the {sampler.view!r} view, which process "
            f"{type(process).__name__} does not provide; samplers that fit: {fit}"
        )
    return sampler


@torch.no_grad()
def sample(
    process: Process,
    net: nn.Module,
    event_shape: tuple[int, ...],
    *,
    n: int = 1024,
    sampler: str = "heun",
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
) -> SampleSet:
    """Draw ``n`` samples of ``event_shape`` by integrating the reverse dynamics of ``process``.

    Sample ``i`` uses its own generator seeded from ``(seed, i)``, so it does not depend on
    ``batch_size``. ``cond`` (``[n]`` class labels) conditions the network. ``options`` are
    keyword options of the sampler function (e.g. ``rtol`` for dopri5, ``S_churn``).

    Guidance (:mod:`physgen.sampling.guidance`, every process): ``guidance`` is the classifier-free
    scale ``w`` (0 unconditional, 1 conditional, > 1 guided; needs ``cond`` and a net trained
    with label dropout), ``guidance_interval`` ``(lo, hi)`` the view times where it applies (σ,
    or t for flow-matching ODE views). ``classifier(x, sigma) -> logits`` adds
    ``classifier_scale · ∇ log p(cond | x, σ)`` to the score (score views only).

    ``schedule`` (denoiser and score samplers only) replaces the view's σ-grid by a named
    schedule of :mod:`physgen.solvers.grids` between the same endpoints, with
    ``schedule_options`` (e.g. ``{"rho": 5}`` for ``karras``).
    """
    if n < 1:
        raise ConfigError(f"n must be ≥ 1, got {n}")
    if steps < 1:
        raise ConfigError(f"steps must be ≥ 1, got {steps}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
    if cond is not None and cond.shape[0] != n:
        raise ConfigError(f"cond has {cond.shape[0]} labels for {n} samples")
    if cond is None and (guidance != 1.0 or classifier is not None):
        raise ConfigError("guidance needs class labels: pass cond ([n] ints, −1 = none)")
    spec = resolve_sampler(process, sampler, registry)
    options = {**spec.options, **(options or {})}
    unknown = set(options) - set(spec.options)
    if unknown:
        known = ", ".join(spec.options) or "none"
        raise ConfigError(
            f"sampler {sampler!r} has no option {sorted(unknown)[0]!r} (options: {known})"
        )
    if schedule is not None and spec.view not in ("denoiser", "score"):
        raise ConfigError(f"a schedule applies to denoiser/score samplers, not {sampler!r}")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.eval()
    chunks, nfe = [], 0
    start_time = time.perf_counter()
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        gen = StackedGenerator.for_samples(seed, start, count, device)
        c = cond[start : start + count].to(device) if cond is not None else None
        guided = GuidedNet(net, guidance, guidance_interval)
        view = process.view(spec.view, guided, c)
        if classifier is not None:
            view = classifier_guided(view, classifier, c, classifier_scale)
        grid = view.grid(steps) if hasattr(view, "grid") else view.sigmas(steps)
        if schedule is not None:
            grid = regrid(grid, schedule, **(schedule_options or {}))
        x = view.prior((count, *event_shape), generator=gen, device=device, dtype=dtype)
        f = CountedFn(guided.timed(_view_fn(view, spec.view)))
        x = spec.fn(f, x, grid.to(device), generator=gen, **options)
        chunks.append(x)
        nfe = max(nfe, f.nfe)
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
        guidance=_guidance_record(cond, guidance, guidance_interval, classifier, classifier_scale),
    )


def _guidance_record(
    cond: Tensor | None,
    scale: float,
    interval: tuple[float, float] | None,
    classifier: Classifier | None,
    classifier_scale: float,
) -> dict[str, Any]:
    if cond is None:
        return {}
    out: dict[str, Any] = {"scale": float(scale)}
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
