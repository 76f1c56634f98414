"""Exact log-likelihood through the probability-flow ODE (instantaneous change of variables).

For an ODE ``dx/dt = f(x, t)`` carrying the prior (``grid[0]``) to the data (``grid[-1]``),
the density along a trajectory obeys ``d log p_t(x_t)/dt = −∇·f(x_t, t)`` (Chen et al. 2018,
"Neural Ordinary Differential Equations", Theorem 1), hence::

    log p_data(x) = log p_prior(x_prior) + ∫_{t_data}^{t_prior} ∇·f(x_t, t) dt,

integrated from the data end to the prior end on the augmented state ``(x, Δlogp)`` with
torchdiffeq. Adaptive methods step exactly onto the prior end (no dense-output interpolation
there), and ``logp_rtol``/``logp_atol`` set the Δlogp component's own tolerances (torchdiffeq
controls each component of a tuple state separately). ``dopri8`` (Dormand–Prince 8(7)) reaches
a given error with fewer evaluations than ``dopri5`` below ~1e-5 nats/dim, hence the
default (``benchmarks/likelihood.py``).

Divergence estimators (:data:`DIVERGENCES`):

* ``exact``: one backward pass (VJP) per dimension; affordable for N up to ~100.
* ``hutchinson-rademacher`` / ``hutchinson-gaussian``: ``εᵀ (∂f/∂x) ε`` with the probes ``ε``
  drawn once and held fixed through the solve (Grathwohl et al. 2019, "FFJORD", eq. 7);
  unbiased for every example, one VJP per probe.
* ``hutch++``: Hutch++ (Meyer et al. 2021, "Hutch++", Algorithm 1) with an identity control
  variate. The EDM field's Jacobian ``∂f/∂x = (I − ∂D/∂x)/σ`` (eq. 3) is close to "a multiple
  of I plus low rank" (a mixture's components shrink isotropically; the spread of its means
  is low-rank). A fixed random sketch ``S`` gives the mean eigenvalue
  ``c = tr(Sᵀ Jᵀ S)/‖S‖²``, counted exactly as ``c N``; the top ``sketch_size`` directions of
  ``J − c I``, ``Q = orth((J − c I)ᵀ S)``, are traced exactly; Rademacher probes projected off
  ``Q`` estimate the rest. Given ``S`` every probe is unbiased and independent, and their
  spread is the standard error. Cost per field evaluation: ``2·sketch_size +
  hutchinson_samples`` VJPs (:attr:`LikelihoodResult.vjps` counts them).

With several probes each keeps its own ``Δlogp`` and their spread gives a standard error.

Works for any :class:`~physgen.core.process.ODEView` with a ``prior_logp`` (diffusion, PFGM++, flow
matching). On a σ-grid ending at σ = 0 the integral starts at ``σ_min = grid[-2]``, as is
standard: ``dx/dσ`` is 0/0 at σ = 0, and what is measured is the log-density of the data
smoothed by ``N(0, σ_min² I)`` (for data in [−1, 1] with σ_min = 0.002, well below the 8-bit
bin width 2/256). Unit: nats per example; :func:`bits_per_dim` converts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint

from physgen.core.process import CountedFn, ODEView
from physgen.core.rng import Generator, randn
from physgen.errors import ConfigError, SolverError

__all__ = ["DIVERGENCES", "LikelihoodResult", "bits_per_dim", "log_likelihood"]

#: the divergence estimators :func:`log_likelihood` accepts
DIVERGENCES = ("exact", "hutchinson-rademacher", "hutchinson-gaussian", "hutch++")

#: torchdiffeq's adaptive methods (the others step on the grid)
ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")

#: steps of ``view.grid(steps)`` when no grid is given (only fixed-step methods step on it)
DEFAULT_STEPS = 32


def bits_per_dim(logp: Tensor, n_dims: int, offset: float = 0.0) -> Tensor:
    """``−log p / (N ln 2) + offset``, ``[B]`` from ``logp`` ``[B]`` in nats.

    For 8-bit data scaled to [−1, 1] with uniform dequantisation the offset is 7 (bin width
    2/256 = 2⁻⁷)."""
    return -logp / (n_dims * math.log(2)) + offset


@dataclass(frozen=True)
class LikelihoodResult:
    """Log-likelihoods of a batch and what they cost."""

    #: ``[B]`` log-density of each example, in nats
    logp: Tensor
    #: field evaluations spent by the ODE solver (each followed by the divergence's backward)
    nfe: int
    #: N, scalar dimensions of one example
    n_dims: int
    #: ``[B]`` standard error of a Hutchinson estimate (None: exact trace or a single probe)
    stderr: Tensor | None = None
    #: backward passes (vector-Jacobian products) spent on the divergence, over all evaluations
    vjps: int = 0

    def bpd(self, offset: float = 0.0) -> Tensor:
        """Bits per dimension ``[B]``; see :func:`bits_per_dim`."""
        return bits_per_dim(self.logp, self.n_dims, offset)


def log_likelihood(
    view: ODEView,
    x: Tensor,
    *,
    steps_grid: int | Tensor | None = None,
    method: str = "dopri8",
    rtol: float = 1e-4,
    atol: float = 1e-4,
    logp_rtol: float | None = None,
    logp_atol: float | None = None,
    divergence: str = "exact",
    hutchinson_samples: int = 1,
    sketch_size: int | None = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    generator: Generator | None = None,
) -> LikelihoodResult:
    """Log-likelihood ``[B]`` (nats) of the data ``x`` ``[B, *event]`` under the PF-ODE of
    ``view``.

    ``steps_grid``: the time grid (float64, prior end first) or a number of steps for
    ``view.grid``; its ends bound the integral and a fixed-step ``method`` (``"euler"``,
    ``"rk4"``) steps on its points; adaptive methods (``"dopri5"``, ``"dopri8"``, ``"bosh3"``,
    …) use ``rtol``/``atol`` on ``x`` and ``logp_rtol``/``logp_atol`` (default: the same) on the
    per-example Δlogp. ``divergence``: one of
    :data:`DIVERGENCES`; Hutchinson and Hutch++ draw ``hutchinson_samples`` probes per example
    (and Hutch++ a sketch of ``sketch_size`` columns, default ``hutchinson_samples``) from
    ``generator``. ``prior_logp`` replaces the view's prior density. No gradient flows back to
    ``x`` or to the network.
    """
    prior_logp = prior_logp or view.prior_logp
    _validate(prior_logp, divergence, hutchinson_samples, sketch_size)
    assert prior_logp is not None  # checked by _validate
    times = _data_to_prior_times(view, steps_grid)
    probes = sketch = None
    if divergence != "exact":
        probes = _probes(x, hutchinson_samples, divergence, generator)
    if divergence == "hutch++":
        sketch = _probes(x, sketch_size or hutchinson_samples, divergence, generator)
    field = CountedFn(view.field)
    vjps = [0]
    k = 1 if probes is None else len(probes)

    def augmented(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        out, div, used = _field_and_divergence(field, state[0], t, probes, sketch)
        vjps[0] += used
        return out, div

    delta0 = x.new_zeros(k, x.shape[0])  # [K, B]
    span = times.to(x.device)
    tols: dict[str, Any] = {
        "rtol": (rtol, rtol if logp_rtol is None else logp_rtol),
        "atol": (atol, atol if logp_atol is None else logp_atol),
    }
    if method in ADAPTIVE:
        # only the ends matter; stepping exactly onto the last one avoids torchdiffeq's dense
        # output there (its dopri8 interpolant is of lower order than the step)
        span = span[[0, -1]]
        tols["options"] = {"step_t": span[-1:]}
    try:
        xs, deltas = odeint(augmented, (x.detach(), delta0), span, method=method, **tols)
    except AssertionError as err:  # torchdiffeq signals step-size underflow this way
        raise SolverError(f"log_likelihood: {method} failed: {err}") from None
    per_probe = prior_logp(xs[-1]) + deltas[-1]  # [K, B], Chen et al. 2018, Theorem 1
    if not torch.isfinite(per_probe).all():
        raise SolverError("log_likelihood: non-finite log-density (check the field and grid)")
    stderr = per_probe.std(0) / math.sqrt(k) if k > 1 else None
    return LikelihoodResult(per_probe.mean(0), field.nfe, x[0].numel(), stderr, vjps[0])


def _validate(
    prior_logp: object,
    divergence: str,
    hutchinson_samples: int,
    sketch_size: int | None,
) -> None:
    if prior_logp is None:
        raise ConfigError("log_likelihood needs a view with a prior_logp")
    if divergence not in DIVERGENCES:
        raise ConfigError(f"unknown divergence {divergence!r} (one of: {', '.join(DIVERGENCES)})")
    if hutchinson_samples < 1:
        raise ConfigError(f"hutchinson_samples must be ≥ 1, got {hutchinson_samples}")
    if sketch_size is not None and sketch_size < 1:
        raise ConfigError(f"sketch_size must be ≥ 1, got {sketch_size}")


def _data_to_prior_times(view: ODEView, steps_grid: int | Tensor | None) -> Tensor:
    """The grid reversed, data end first; a σ-grid's final 0 is replaced by starting at
    ``σ_min = grid[-2]``."""
    if steps_grid is None or isinstance(steps_grid, int):
        grid = view.grid(steps_grid or DEFAULT_STEPS)
    else:
        grid = torch.as_tensor(steps_grid, dtype=torch.float64)
    if grid[-1] == 0:
        grid = grid[:-1]
    if len(grid) < 2:
        raise ConfigError("log_likelihood needs a grid with two distinct nonzero end points")
    return grid.flip(0)


def _probes(x: Tensor, k: int, divergence: str, generator: Generator | None) -> Tensor:
    """``[K, B, *event]`` probes, drawn per example (``[B, K, …]`` from a stacked generator)
    and held fixed through the solve: Gaussian, or Rademacher (±1) for the other estimators."""
    z = randn((x.shape[0], k, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
    z = z.transpose(0, 1)
    if divergence != "hutchinson-gaussian":
        z = torch.where(z >= 0, 1.0, -1.0).to(x.dtype)
    return z


def _field_and_divergence(
    field: CountedFn,
    x: Tensor,
    t: Tensor,
    probes: Tensor | None,
    sketch: Tensor | None,
) -> tuple[Tensor, Tensor, int]:
    """``f(x, t)`` ``[B, *event]``, its divergence ``[K, B]`` (exact, ``K = 1``, or one
    estimate per probe) and the VJPs spent."""
    k = 1 if probes is None else len(probes)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = field(x, t)
        if not out.requires_grad:  # a field that does not depend on x
            return out.detach(), x.new_zeros(k, x.shape[0]), 0
        if probes is None:
            return out.detach(), _exact_divergence(out, x)[None].detach(), x[0].numel()

        def op(v: Tensor) -> Tensor:  # Jᵀ v on flat [B, N] vectors
            return _vjp(out, x, v.view_as(x)).flatten(1)

        if sketch is None:
            div = torch.stack([_quadratic(op(p.flatten(1)), p.flatten(1)) for p in probes])
            used = len(probes)
        else:
            div, used = _hutchpp(op, probes.flatten(2), sketch.flatten(2))
    return out.detach(), div.detach(), used


def _quadratic(u: Tensor, v: Tensor) -> Tensor:
    """``⟨u, v⟩`` per example ``[B]``."""
    return (u * v).flatten(1).sum(1)


def _exact_divergence(out: Tensor, x: Tensor) -> Tensor:
    """``tr(∂f/∂x)`` per example ``[B]``: one backward pass per dimension (examples are
    independent, so the gradient of a batch sum gives every example's diagonal entry)."""
    flat = out.flatten(1)
    div = x.new_zeros(x.shape[0])
    for j in range(flat.shape[1]):
        onehot = torch.zeros_like(flat)
        onehot[:, j] = 1
        div = div + _vjp(out, x, onehot.view_as(out)).flatten(1)[:, j]
    return div


def _hutchpp(op: Callable[[Tensor], Tensor], probes: Tensor, sketch: Tensor) -> tuple[Tensor, int]:
    """Hutch++ (Meyer et al. 2021, Algorithm 1) for ``tr J`` per example and per probe
    ``[K, B]``, from ``op(v) = Jᵀ v`` alone (``tr J = tr Jᵀ``) on flat ``[B, N]`` vectors, on
    ``A = J − c I`` where ``c`` is the sketch's estimate of the mean eigenvalue (``tr J =
    c N + tr A`` for any ``c`` fixed before the probes are read, so each probe stays unbiased
    given the sketch)."""
    n = sketch.shape[-1]
    js = torch.stack([op(v) for v in sketch])  # Jᵀ S, [m, B, N]
    c = (js * sketch).sum((0, 2)) / sketch.pow(2).sum((0, 2))  # [B]

    def a_t(v: Tensor) -> Tensor:  # Aᵀ v
        return op(v) - c[:, None] * v

    # Q: an orthonormal basis of Aᵀ S per example, [B, N, m]
    y = (js - c[:, None] * sketch).permute(1, 2, 0)
    q = torch.linalg.qr(y.double()).Q.to(sketch.dtype)
    # tr(Qᵀ A Q) = tr(Qᵀ Aᵀ Q), exactly
    top = sum(_quadratic(a_t(q[..., j]), q[..., j]) for j in range(q.shape[-1]))
    # Hutchinson on the rest: g' = (I − Q Qᵀ) g, E[g'ᵀ A g'] = tr((I − QQᵀ) A (I − QQᵀ))
    rest = []
    for g in probes:
        g = g - (q @ (q.transpose(1, 2) @ g[..., None]))[..., 0]
        rest.append(_quadratic(a_t(g), g))
    return c * n + top + torch.stack(rest), 2 * len(sketch) + len(probes)


def _vjp(out: Tensor, x: Tensor, v: Tensor) -> Tensor:
    """``vᵀ (∂out/∂x)``, shaped like ``x`` (zeros where ``out`` does not depend on ``x``)."""
    (grad,) = torch.autograd.grad(out, x, v, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad
