"""Solvers against their declared orders and NFE rules, closed-form ODEs, a peer library, and
their failure modes (docs/math.md §5, §6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchdiffeq import odeint

from physgen.core.process import CountedFn, DenoiserView, karras_sigmas
from physgen.errors import ConfigError, SolverError
from physgen.solvers import Sampler, multistep, ode
from physgen.testing.oracles import GaussianMixture, empirical_denoiser

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX = 0.05, 5.0
SAMPLERS = {s.name: s for s in [*ode.SAMPLERS, *multistep.SAMPLERS]}


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: intra-op threads only add synchronisation cost (large on a busy 2-core box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def problem():
    """PF-ODE of an exact 4-component mixture in R^3 (stds 0.3), prior draws at σ_max, and a
    tight float64 dopri5 solution at σ_min from the same draws."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gmm = GaussianMixture.random(4, 3, std=0.3, seed=0, dtype=F64)
    view = DenoiserView(
        denoise=gmm.denoise,
        sigmas=lambda n: karras_sigmas(n, SIGMA_MIN, SIGMA_MAX),
        prior=None,  # type: ignore[arg-type]
    )
    x0 = SIGMA_MAX * torch.randn(32, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    field = view.as_ode().field
    span = torch.tensor([SIGMA_MAX, SIGMA_MIN], dtype=F64)
    reference = ode.dopri5(field, x0, span, rtol=1e-10, atol=1e-10, max_steps=100_000)
    torch.set_num_threads(threads)
    return {"gmm": gmm, "field": field, "x0": x0, "reference": reference}


def _grid(points: int, zero: bool = False) -> torch.Tensor:
    """A Karras grid of ``points`` σ in [σ_min, σ_max] (then 0 when ``zero``)."""
    return karras_sigmas(points, SIGMA_MIN, SIGMA_MAX, zero=zero)


# -- declared orders ------------------------------------------------------------------------

# Step counts in each solver's asymptotic regime (errors from ~1e-2 down to ~1e-4..1e-7).
STEP_COUNTS = {
    "euler": [128, 256, 512, 1024],
    "heun": [16, 32, 64, 128],
    "rk4": [8, 16, 32, 64],
    "dpmpp_2m": [32, 64, 128, 256],
}


@pytest.mark.parametrize("name", list(STEP_COUNTS))
def test_convergence_slope_matches_declared_order(problem, name):
    spec = SAMPLERS[name]
    f = problem["gmm"].denoise if spec.view == "denoiser" else problem["field"]
    steps = STEP_COUNTS[name]
    errors = []
    for n in steps:
        x = spec.fn(f, problem["x0"], _grid(n + 1))  # n intervals, ending at σ_min
        errors.append((x - problem["reference"]).pow(2).sum(1).mean().sqrt().item())
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    print(f"{name}: errors {[f'{e:.2e}' for e in errors]}, slope {slope:.3f}")
    assert spec.order is not None and abs(slope - spec.order) <= 0.3, (slope, errors)


@pytest.mark.parametrize("tableau", [ode.EULER, ode.HEUN, ode.RK4])
def test_tableaux_satisfy_the_order_conditions(tableau):
    # Butcher (2016) Table 314: the conditions up to order 4 for explicit RK methods.
    a = np.zeros((len(tableau.c), len(tableau.c)))
    for i, row in enumerate(tableau.a):
        a[i, : len(row)] = row
    b, c = np.array(tableau.b), np.array(tableau.c)
    np.testing.assert_allclose(a.sum(1), c)  # row-sum condition
    conditions = [
        (1, b.sum(), 1),
        (2, b @ c, 1 / 2),
        (3, b @ c**2, 1 / 3),
        (3, b @ a @ c, 1 / 6),
        (4, b @ c**3, 1 / 4),
        (4, (b * c) @ a @ c, 1 / 8),
        (4, b @ a @ c**2, 1 / 12),
        (4, b @ a @ a @ c, 1 / 24),
    ]
    for order, value, target in conditions:
        if order <= tableau.order:
            assert abs(value - target) < 1e-12, (order, value, target)
    if tableau.order < 4:  # the declared order is the true one: the next order fails
        assert any(abs(v - t) > 1e-6 for o, v, t in conditions if o == tableau.order + 1)


# -- closed forms and a peer library ------------------------------------------------------------


def test_closed_form_quadrature_errors():
    # dx/dt = 3t² takes x to x + 1 on [0, 1]. RK4 (Simpson) is exact for it; Heun (trapezoid)
    # errs by exactly h²/12 · (f'(1) − f'(0)) = h²/2 (Euler–Maclaurin); Euler's left sum
    # 3h³ Σ i² = 1 − 3h/2 + h²/2.
    def field(x, t):
        return 3 * t.to(x.dtype) ** 2 * torch.ones_like(x)

    x0 = torch.zeros(2, 1, dtype=F64)
    grid = torch.linspace(0, 1, 5, dtype=F64)  # h = 1/4
    h = 0.25
    torch.testing.assert_close(ode.rk4(field, x0, grid[[0, -1]]), x0 + 1)
    torch.testing.assert_close(ode.heun(field, x0, grid), x0 + 1 + h**2 / 2)
    torch.testing.assert_close(ode.euler(field, x0, grid), x0 + 1 - 3 * h / 2 + h**2 / 2)


@pytest.mark.parametrize("ours, theirs", [("euler", "euler"), ("heun", "heun2")])
def test_fixed_step_matches_torchdiffeq_on_the_same_grid(problem, ours, theirs):
    grid = _grid(12)
    x = SAMPLERS[ours].fn(problem["field"], problem["x0"], grid)
    peer = odeint(lambda t, y: problem["field"](y, t), problem["x0"], grid, method=theirs)[-1]
    torch.testing.assert_close(x, peer, rtol=1e-12, atol=1e-12)


def test_dpmpp_2m_is_exact_when_the_denoiser_is_constant():
    # One data point: D(x; σ) = y, and the PF-ODE solution x(σ') = y + (σ'/σ)(x − y) is what
    # the exponential integrator computes at any step size (the 2M correction vanishes).
    y = torch.tensor([[0.5, -2.0]], dtype=F64)
    denoise = empirical_denoiser(y)
    x0 = 5 * torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    grid = karras_sigmas(5, 0.1, 5.0, zero=False)
    exact = y + (0.1 / 5.0) * (x0 - y)
    torch.testing.assert_close(multistep.dpmpp_2m(denoise, x0, grid), exact)


# -- NFE and the σ = 0 rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, zero, expected",
    [
        ("euler", True, lambda n: n),
        ("heun", True, lambda n: 2 * n - 1),  # EDM Algorithm 1
        ("rk4", True, lambda n: 4 * n - 3),
        ("dpmpp_2m", True, lambda n: n),
        ("euler", False, lambda n: n),
        ("heun", False, lambda n: 2 * n),
        ("rk4", False, lambda n: 4 * n),
        ("dpmpp_2m", False, lambda n: n),
    ],
)
def test_nfe_counted_and_declared(problem, name, zero, expected):
    spec = SAMPLERS[name]
    for n in (1, 2, 7):
        grid = _grid(n, zero=True) if zero else _grid(n + 1)  # n intervals either way
        f = CountedFn(problem["gmm"].denoise if spec.view == "denoiser" else problem["field"])
        spec.fn(f, problem["x0"], grid)
        assert f.nfe == expected(n) == spec.nfe(grid)  # type: ignore[misc]


@pytest.mark.parametrize("name", ["euler", "heun", "rk4", "dpmpp_2m", "dopri5"])
def test_last_step_into_zero_lands_on_the_denoised_value(problem, name):
    spec, gmm = SAMPLERS[name], problem["gmm"]
    f = gmm.denoise if spec.view == "denoiser" else problem["field"]
    grid = _grid(8, zero=True)
    seen: dict[int, torch.Tensor] = {}
    x = spec.fn(f, problem["x0"], grid, on_step=lambda i, x: seen.__setitem__(i, x))
    assert sorted(seen) == list(range(8))
    torch.testing.assert_close(x, gmm.denoise(seen[6], grid[-2]), rtol=1e-12, atol=1e-12)
    assert torch.equal(seen[7], x)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_state_keeps_its_dtype_with_a_float64_grid(problem, name):
    spec = SAMPLERS[name]
    f = problem["gmm"].denoise if spec.view == "denoiser" else problem["field"]
    x = spec.fn(f, problem["x0"].float(), _grid(6, zero=True))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


# -- adaptive --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dopri5", "bosh3", "adaptive_heun"])
def test_adaptive_accuracy_and_reported_nfe(problem, name):
    spec = SAMPLERS[name]
    assert spec.nfe is None and spec.options["rtol"] == 1e-5
    f = CountedFn(problem["field"])
    x = spec.fn(f, problem["x0"], _grid(2), **spec.options)
    error = (x - problem["reference"]).norm(dim=1).max().item()
    print(f"{name}: NFE {f.nfe}, max error {error:.2e}")
    assert 0 < f.nfe < 2000 and error < 5e-3
    loose = CountedFn(problem["field"])
    spec.fn(loose, problem["x0"], _grid(2), rtol=1e-3, atol=1e-3)
    assert loose.nfe < f.nfe


def test_adaptive_on_step_reports_grid_points_without_extra_evaluations(problem):
    grid = _grid(6)
    seen: dict[int, torch.Tensor] = {}
    f, g = CountedFn(problem["field"]), CountedFn(problem["field"])
    end = ode.dopri5(f, problem["x0"], grid, on_step=lambda i, x: seen.__setitem__(i, x))
    assert torch.equal(end, ode.dopri5(g, problem["x0"], grid)) and f.nfe == g.nfe
    assert sorted(seen) == list(range(5))
    mid = ode.dopri5(problem["field"], problem["x0"], grid[:3], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(seen[1], mid, atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", ["dopri5", "bosh3"])
def test_adaptive_never_evaluates_past_the_end(problem, name):
    # torchdiffeq steps past the end and interpolates back unless told otherwise; on an EDM
    # grid that would evaluate a network at σ < 0 (ln σ = nan).
    grid = karras_sigmas(18, 0.002, 80.0)
    evaluated: list[float] = []

    def field(x, sigma):
        evaluated.append(float(sigma))
        return problem["field"](x, sigma)

    x0 = 80 * torch.randn(8, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    SAMPLERS[name].fn(field, x0, grid)
    assert min(evaluated[:-1]) >= float(grid[-2]) and evaluated[-1] == float(grid[-2])


def test_blow_up_is_a_one_line_solver_error():
    # dx/dt = x², x(0) = 1: x = 1/(1 − t) blows up at t = 1.
    with pytest.raises(SolverError) as info:
        ode.dopri5(
            lambda x, t: x**2, torch.ones(3, 1, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64)
        )
    message = str(info.value)
    assert "\n" not in message and "dopri5" in message and "underflow" in message
    assert "rtol=1e-05" in message and "t=1" in message


def test_unreachable_tolerance_is_a_solver_error(problem):
    # float32 cannot meet rtol = atol = 1e-14: the steps shrink until the step budget runs out.
    with pytest.raises(SolverError, match="bosh3 failed with too many steps"):
        ode.bosh3(
            problem["field"], problem["x0"].float(), _grid(2), rtol=1e-14, atol=1e-14, max_steps=200
        )


def test_bad_grids_and_options_are_config_errors(problem):
    with pytest.raises(ConfigError):
        ode.heun(problem["field"], problem["x0"], torch.tensor([1.0], dtype=F64))
    with pytest.raises(ConfigError):
        multistep.dpmpp_2m(problem["gmm"].denoise, problem["x0"], torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ConfigError):
        ode.dopri5(problem["field"], problem["x0"], _grid(2), rtol=0.0)


def test_sampler_records():
    assert all(isinstance(s, Sampler) for s in SAMPLERS.values())
    declared = {name: (s.view, s.order) for name, s in SAMPLERS.items()}
    assert declared == {
        "euler": ("ode", 1),
        "heun": ("ode", 2),
        "rk4": ("ode", 4),
        "dopri5": ("ode", 5),
        "bosh3": ("ode", 3),
        "adaptive_heun": ("ode", 2),
        "dpmpp_2m": ("denoiser", 2),
        "dpmpp_3m": ("denoiser", 3),  # these three: tests/test_multistep.py
        "unipc": ("denoiser", 4),
        "ipndm": ("denoiser", 4),
    }
    for s in SAMPLERS.values():
        assert s.description and "\n" not in s.description and not s.stochastic
