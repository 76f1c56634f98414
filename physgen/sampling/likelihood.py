"""Exact log-likelihood through the probability-flow ODE (instantaneous change of variables).

For an ODE ``dx/dt = f(x, t)`` carrying the prior (``grid[0]``) to the data (``grid[-1]``),
the density along a trajectory obeys ``d log p_t(x_t)/dt = −∇·f(x_t, t)`` (Chen et al. 2018,
"Neural Ordinary Differential Equations", Theorem 1), hence (docs/math.md §1)::

    log p_data(x) = log p_prior(x_prior) + ∫_{t_data}^{t_prior} ∇·f(x_t, t) dt,

integrated from the data end to the prior end on the augmented state ``(x, Δlogp)`` with
torchdiffeq. The divergence is exact (one backward pass per dimension: affordable for N up to
~10) or the Hutchinson estimate ``εᵀ (∂f/∂x) ε`` with the probes ``ε`` drawn once and held fixed
through the solve (Grathwohl et al. 2019, "FFJORD", eq. 7), which is unbiased for every example.
With several probes each keeps its own ``Δlogp`` and their spread gives a standard error.

Works for any :class:`~physgen.core.process.ODEView` with a ``prior_logp`` (diffusion, PFGM++, flow
matching). On a σ-grid ending at σ = 0 the integral starts at ``σ_min = grid[-2]``, as is
standard: ``dx/dσ`` is 0/0 at σ = 0, and what is measured is the log-density of the data
smoothed by ``N(0, σ_min² I)`` (for data in [−1, 1] with σ_min = 0.002, well below the 8-bit
bin width 2/256). Unit: nats per example; :func:`bits_per_dim` converts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from physgen.core.process import CountedFn, ODEView
from physgen.core.rng import Generator, randn
from physgen.errors import ConfigError, SolverError

__all__ = ["DIVERGENCES", "LikelihoodResult", "bits_per_dim", "log_likelihood"]

#: the divergence estimators :func:`log_likelihood` accepts
DIVERGENCES = ("exact", "hutchinson-rademacher", "hutchinson-gaussian")

#: steps of ``view.grid(steps)`` when no grid is given (only fixed-step methods step on it)
DEFAULT_STEPS = 32


def bits_per_dim(logp: Tensor, n_dims: int, offset: float = 0.0) -> Tensor:
    """``−log p / (N ln 2) + offset`` (docs/math.md §1), ``[B]`` from ``logp`` ``[B]`` in nats.

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

    def bpd(self, offset: float = 0.0) -> Tensor:
        """Bits per dimension ``[B]``; see :func:`bits_per_dim`."""
        return bits_per_dim(self.logp, self.n_dims, offset)


def log_likelihood(
    view: ODEView,
    x: Tensor,
    *,
    steps_grid: int | Tensor | None = None,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "exact",
    hutchinson_samples: int = 1,
    generator: Generator | None = None,
) -> LikelihoodResult:
    """Log-likelihood ``[B]`` (nats) of the data ``x`` ``[B, *event]`` under the PF-ODE of
    ``view``.

    ``steps_grid``: the time grid (float64, prior end first) or a number of steps for
    ``view.grid``; its ends bound the integral and a fixed-step ``method`` (``"euler"``,
    ``"rk4"``) steps on its points; adaptive methods (``"dopri5"``, ``"bosh3"``, …) use
    ``rtol``/``atol``. ``divergence``: one of :data:`DIVERGENCES`; Hutchinson draws
    ``hutchinson_samples`` probes per example from ``generator``. No gradient flows back to
    ``x`` or to the network.
    """
    _validate(view, divergence, hutchinson_samples)
    times = _data_to_prior_times(view, steps_grid).to(x.device)
    probes = None
    if divergence != "exact":
        probes = _probes(x, hutchinson_samples, divergence, generator)
    field = CountedFn(view.field)

    def augmented(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return _field_and_divergence(field, state[0], t, probes)

    delta0 = x.new_zeros(1 if probes is None else len(probes), x.shape[0])  # [K, B]
    try:
        xs, deltas = odeint(
            augmented, (x.detach(), delta0), times, method=method, rtol=rtol, atol=atol
        )
    except AssertionError as err:  # torchdiffeq signals step-size underflow this way
        raise SolverError(f"log_likelihood: {method} failed: {err}") from None
    prior_logp = view.prior_logp
    assert prior_logp is not None  # checked by _validate
    per_probe = prior_logp(xs[-1]) + deltas[-1]  # [K, B], docs/math.md §1
    if not torch.isfinite(per_probe).all():
        raise SolverError("log_likelihood: non-finite log-density (check the field and grid)")
    k = len(per_probe)
    stderr = per_probe.std(0) / math.sqrt(k) if k > 1 else None
    return LikelihoodResult(per_probe.mean(0), field.nfe, x[0].numel(), stderr)


def _validate(view: ODEView, divergence: str, hutchinson_samples: int) -> None:
    if view.prior_logp is None:
        raise ConfigError("log_likelihood needs a view with a prior_logp")
    if divergence not in DIVERGENCES:
        raise ConfigError(f"unknown divergence {divergence!r} (one of: {', '.join(DIVERGENCES)})")
    if hutchinson_samples < 1:
        raise ConfigError(f"hutchinson_samples must be ≥ 1, got {hutchinson_samples}")


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
    """``[K, B, *event]`` Hutchinson probes, drawn per example (``[B, K, …]`` from a stacked
    generator) and held fixed through the solve: Gaussian or Rademacher (±1)."""
    z = randn((x.shape[0], k, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
    z = z.transpose(0, 1)
    if divergence == "hutchinson-rademacher":
        z = torch.where(z >= 0, 1.0, -1.0).to(x.dtype)
    return z


def _field_and_divergence(
    field: CountedFn, x: Tensor, t: Tensor, probes: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``f(x, t)`` ``[B, *event]`` and its divergence ``[K, B]``: exact (``K = 1``) or one
    Hutchinson estimate ``εᵀ (∂f/∂x) ε`` per probe."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = field(x, t)
        if not out.requires_grad:  # a field that does not depend on x
            return out, x.new_zeros(1 if probes is None else len(probes), x.shape[0])
        if probes is None:
            div = _exact_divergence(out, x)[None]
        else:
            div = torch.stack([(_vjp(out, x, p) * p).flatten(1).sum(1) for p in probes])
    return out.detach(), div.detach()


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


def _vjp(out: Tensor, x: Tensor, v: Tensor) -> Tensor:
    """``vᵀ (∂out/∂x)``, shaped like ``x`` (zeros where ``out`` does not depend on ``x``)."""
    (grad,) = torch.autograd.grad(out, x, v, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad
