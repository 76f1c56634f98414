"""ODE solvers on the ``ode`` view: fixed-step explicit Runge–Kutta and torchdiffeq's adaptive.

Each integrates ``dx/dt = f(x, t)`` over ``grid`` (float64, prior end first; see
:mod:`physgen.core.process`). Time stays float64; the state keeps its own dtype; ``f`` receives
``grid``-precision 0-dim times and casts them itself.

The σ = 0 rule: on a σ-grid ending at 0, ``dx/dσ = (x − D)/σ`` is 0/0 at the last point, so
the last interval is always one Euler step, which lands exactly on ``D(x; σ_{n−1})`` (Karras et
al. 2022, "EDM", Algorithm 1, line 8). Heun on ``n`` such intervals spends ``2n − 1``
evaluations, RK4 ``4(n − 1) + 1``.

References: Butcher, "Numerical Methods for Ordinary Differential Equations" (2016), §23
(tableaux of Euler, Heun's trapezoidal method, classical RK4); Dormand & Prince (1980);
Bogacki & Shampine (1989); torchdiffeq (Chen et al. 2018) for the adaptive methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from physgen.errors import ConfigError, SolverError
from physgen.solvers import Sampler

__all__ = [
    "EULER",
    "HEUN",
    "RK4",
    "SAMPLERS",
    "Tableau",
    "adaptive_heun",
    "bosh3",
    "dopri5",
    "euler",
    "heun",
    "rk4",
    "rk_step",
]

Field = Callable[[Tensor, Tensor], Tensor]
OnStep = Callable[[int, Tensor], None]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge–Kutta method as its Butcher tableau: stage ``i`` evaluates
    ``f(x + h Σ_j a[i][j] k_j, t + c[i] h)``; the step is ``x + h Σ_i b[i] k_i``."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int


# Butcher (2016) §23. Heun's trapezoidal rule is EDM Algorithm 1, lines 5–7.
#: explicit Euler
EULER = Tableau(c=(0.0,), a=((),), b=(1.0,), order=1)
#: Heun's trapezoidal rule (EDM Algorithm 1, lines 5–7)
HEUN = Tableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2)
#: the classical 4th-order Runge–Kutta method
RK4 = Tableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    order=4,
)


def rk_step(f: Field, x: Tensor, t: Tensor, t_next: Tensor, tableau: Tableau) -> Tensor:
    """One explicit Runge–Kutta step of ``tableau`` from ``t`` to ``t_next`` (0-dim float64)."""
    h = t_next - t
    ks: list[Tensor] = []
    for c, a in zip(tableau.c, tableau.a, strict=True):
        x_stage = x
        for a_j, k in zip(a, ks, strict=True):
            if a_j != 0:
                x_stage = x_stage + (a_j * h) * k
        t_stage = t_next if c == 1 else t + c * h  # land on grid points exactly
        ks.append(f(x_stage, t_stage))
    return x + h * sum(b * k for b, k in zip(tableau.b, ks, strict=True))


def _check_grid(grid: Tensor) -> None:
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ConfigError(f"a solver grid needs ≥ 2 times in a 1-D tensor, got {list(grid.shape)}")


def _ends_at_zero(grid: Tensor) -> bool:
    """Whether ``grid`` is a σ-grid ending at σ = 0 (its last interval is an Euler step)."""
    return bool(grid[-1] == 0)


def _fixed_step(
    tableau: Tableau, f: Field, x: Tensor, grid: Tensor, on_step: OnStep | None
) -> Tensor:
    _check_grid(grid)
    steps = grid.shape[0] - 1
    last_euler = _ends_at_zero(grid)
    for i in range(steps):
        rule = EULER if last_euler and i == steps - 1 else tableau  # EDM Alg. 1, line 8
        x = rk_step(f, x, grid[i], grid[i + 1], rule)
        if on_step is not None:
            on_step(i, x)
    return x


def euler(
    f: Field,
    x: Tensor,
    grid: Tensor,
    *,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
) -> Tensor:
    """Explicit Euler: ``x_{i+1} = x_i + (t_{i+1} − t_i) f(x_i, t_i)``. ``x`` ``[B, *event]``."""
    return _fixed_step(EULER, f, x, grid, on_step)


def heun(
    f: Field,
    x: Tensor,
    grid: Tensor,
    *,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
) -> Tensor:
    """Heun's second-order method, EDM Algorithm 1 (Euler predictor, trapezoidal corrector;
    an Euler step into σ = 0). ``x`` ``[B, *event]``."""
    return _fixed_step(HEUN, f, x, grid, on_step)


def rk4(
    f: Field,
    x: Tensor,
    grid: Tensor,
    *,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
) -> Tensor:
    """The classical fourth-order Runge–Kutta method (an Euler step into σ = 0).
    ``x`` ``[B, *event]``."""
    return _fixed_step(RK4, f, x, grid, on_step)


# --------------------------------------------------------------------------------------
# Adaptive step size through torchdiffeq
# --------------------------------------------------------------------------------------

#: torchdiffeq's assertion messages that mean "the integration failed", and how we name them
_FAILURES = {
    "underflow in dt": "step size underflow",
    "non-finite values": "non-finite state",
    "max_num_steps exceeded": "too many steps",
}


def _adaptive(
    method: str,
    f: Field,
    x: Tensor,
    grid: Tensor,
    on_step: OnStep | None,
    rtol: float,
    atol: float,
    max_steps: int,
) -> Tensor:
    """Integrate with torchdiffeq's ``method`` from ``grid[0]`` to ``grid[-1]`` (to
    ``grid[-2]`` and then one Euler step when the grid ends at σ = 0), never evaluating ``f``
    beyond the end. Intermediate grid points, needed only for ``on_step``, come from the
    solver's dense output at no extra NFE."""
    _check_grid(grid)
    if not (rtol > 0 and atol > 0 and max_steps >= 1):
        raise ConfigError(f"{method} needs rtol, atol > 0 and max_steps ≥ 1")
    last_euler = _ends_at_zero(grid)
    end = grid.shape[0] - 1 - int(last_euler)
    reached = [grid[0]]

    def func(t: Tensor, y: Tensor) -> Tensor:  # torchdiffeq's argument order
        reached[0] = t
        return f(y, t)

    if end > 0:
        times = grid[: end + 1] if on_step is not None else grid[[0, end]]
        try:
            path = odeint(
                func,
                x,
                times,
                rtol=rtol,
                atol=atol,
                method=method,
                # step_t: clip the last step onto the end, so that f is never evaluated past
                # it (torchdiffeq otherwise steps beyond and interpolates back: σ < 0, ln σ).
                options={"max_num_steps": max_steps, "step_t": times[-1:]},
            )
        except AssertionError as err:
            raise _solver_error(err, method, reached[0], rtol, atol) from None
        x = path[-1]
        if on_step is not None:
            for i in range(end):
                on_step(i, path[i + 1])
    if last_euler:
        x = rk_step(f, x, grid[-2], grid[-1], EULER)  # EDM Alg. 1, line 8
        if on_step is not None:
            on_step(end, x)
    if not torch.isfinite(x).all():
        raise _solver_error(AssertionError("non-finite values"), method, grid[-1], rtol, atol)
    return x


def _solver_error(
    err: AssertionError, method: str, t: Tensor, rtol: float, atol: float
) -> SolverError:
    """torchdiffeq's failure assertion as a one-line :class:`SolverError`; any other
    assertion (a bug, not a failed integration) is re-raised as it is."""
    reason = next((v for k, v in _FAILURES.items() if str(err).startswith(k)), None)
    if reason is None:
        raise err
    return SolverError(
        f"{method} failed with {reason} at t={float(t):.6g} (rtol={rtol:g}, atol={atol:g}); "
        "loosen the tolerances, raise max_steps or use float64"
    )


def dopri5(
    f: Field,
    x: Tensor,
    grid: Tensor,
    *,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
    rtol: float = 1e-5,  # relative tolerance of the local error estimate
    atol: float = 1e-5,  # absolute tolerance of the local error estimate
    max_steps: int = 10_000,  # accepted + rejected steps per output interval before giving up
) -> Tensor:
    """Dormand–Prince 5(4) with adaptive steps (torchdiffeq ``dopri5``)."""
    return _adaptive("dopri5", f, x, grid, on_step, rtol, atol, max_steps)


def bosh3(
    f: Field,
    x: Tensor,
    grid: Tensor,
    *,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
    rtol: float = 1e-5,  # relative tolerance of the local error estimate
    atol: float = 1e-5,  # absolute tolerance of the local error estimate
    max_steps: int = 10_000,  # accepted + rejected steps per output interval before giving up
) -> Tensor:
    """Bogacki–Shampine 3(2) with adaptive steps (torchdiffeq ``bosh3``)."""
    return _adaptive("bosh3", f, x, grid, on_step, rtol, atol, max_steps)


def adaptive_heun(
    f: Field,
    x: Tensor,
    grid: Tensor,
    *,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
    rtol: float = 1e-5,  # relative tolerance of the local error estimate
    atol: float = 1e-5,  # absolute tolerance of the local error estimate
    max_steps: int = 10_000,  # accepted + rejected steps per output interval before giving up
) -> Tensor:
    """Heun–Euler 2(1) with adaptive steps (torchdiffeq ``adaptive_heun``)."""
    return _adaptive("adaptive_heun", f, x, grid, on_step, rtol, atol, max_steps)


def _nfe_rule(stages: int) -> Callable[[Tensor], int]:
    """Evaluations on ``grid``: ``stages`` per interval, 1 for an interval into σ = 0."""

    def nfe(grid: Tensor) -> int:
        steps = grid.shape[0] - 1
        return stages * steps - (stages - 1) * int(_ends_at_zero(grid))

    return nfe


#: the ODE samplers, registered by :mod:`physgen.registry.builtin`
SAMPLERS: list[Sampler] = [
    Sampler(
        name="euler",
        fn=euler,
        view="ode",
        description="explicit Euler, one evaluation per step",
        order=EULER.order,
        nfe=_nfe_rule(1),
    ),
    Sampler(
        name="heun",
        fn=heun,
        view="ode",
        description="Heun's 2nd-order method (EDM Algorithm 1), NFE 2n−1 into σ=0",
        order=HEUN.order,
        nfe=_nfe_rule(2),
    ),
    Sampler(
        name="rk4",
        fn=rk4,
        view="ode",
        description="classical 4th-order Runge–Kutta, NFE 4n−3 into σ=0",
        order=RK4.order,
        nfe=_nfe_rule(4),
    ),
    Sampler(
        name="dopri5",
        fn=dopri5,
        view="ode",
        description="adaptive Dormand–Prince 5(4) via torchdiffeq",
        order=5,
        adaptive=True,
    ),
    Sampler(
        name="bosh3",
        fn=bosh3,
        view="ode",
        description="adaptive Bogacki–Shampine 3(2) via torchdiffeq",
        order=3,
        adaptive=True,
    ),
    Sampler(
        name="adaptive_heun",
        fn=adaptive_heun,
        view="ode",
        description="adaptive Heun–Euler 2(1) via torchdiffeq",
        order=2,
        adaptive=True,
    ),
]
