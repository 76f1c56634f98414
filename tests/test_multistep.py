"""DPM-Solver++(3M), UniPC and iPNDM against their declared orders, closed forms and NFE rules;
the named σ-schedules and ``sample(schedule=...)`` (docs/math.md §5, §6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from physgen_diffusion.edm import EDM

from physgen.core.process import CountedFn, DenoiserView, append_dims, karras_sigmas
from physgen.errors import ConfigError
from physgen.nets import MLP
from physgen.sampling import sample
from physgen.solvers import grids, multistep, ode
from physgen.testing.oracles import GaussianMixture

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # EDM's range: D is flat at σ_max (module docstring)
NEW = ["dpmpp_3m", "unipc", "ipndm"]
SAMPLERS = {s.name: s for s in multistep.SAMPLERS}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def problem():
    """PF-ODE of an exact 4-component mixture in R^3 (stds 0.3) on EDM's σ range, prior draws
    at σ_max and a tight float64 dopri5 solution at σ_min from the same draws."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gmm = GaussianMixture.random(4, 3, std=0.3, seed=0, dtype=F64)
    field = DenoiserView(denoise=gmm.denoise, sigmas=None, prior=None).as_ode().field  # type: ignore[arg-type]
    x0 = SIGMA_MAX * torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    span = torch.tensor([SIGMA_MAX, SIGMA_MIN], dtype=F64)
    reference = ode.dopri5(field, x0, span, rtol=1e-12, atol=1e-12, max_steps=1_000_000)
    torch.set_num_threads(threads)
    return {"gmm": gmm, "x0": x0, "reference": reference}


def _rms(x: torch.Tensor, y: torch.Tensor) -> float:
    return (x - y).pow(2).sum(1).mean().sqrt().item()


# -- declared orders ------------------------------------------------------------------------

# Step counts in each solver's asymptotic regime (errors ~1e-3 down to ~1e-8).
STEP_COUNTS = {
    "dpmpp_3m": [64, 128, 256, 512],
    "unipc": [256, 512, 1024],
    "ipndm": [256, 512, 1024],
}


@pytest.mark.parametrize("name", NEW)
def test_convergence_slope_matches_declared_order(problem, name):
    spec = SAMPLERS[name]
    errors = []
    for n in STEP_COUNTS[name]:
        x = spec.fn(
            problem["gmm"].denoise, problem["x0"], karras_sigmas(n + 1, 0.002, 80.0, zero=False)
        )
        errors.append(_rms(x, problem["reference"]))
    slope = -np.polyfit(np.log(STEP_COUNTS[name]), np.log(errors), 1)[0]
    print(f"{name}: errors {[f'{e:.2e}' for e in errors]}, slope {slope:.3f}")
    assert spec.order is not None and abs(slope - spec.order) <= 0.3, (slope, errors)


def test_peer_3m_formula_is_second_order(problem):
    # k-diffusion's sample_dpmpp_3m_sde (eta = 0) and diffusers' third-order update use half
    # the second difference ours does (module docstring). Written out from their source, it
    # converges at order 2 on the same problem, while ours converges at order 3 (above).
    def peer_3m(x, grid):
        d_1 = d_2 = h_1 = h_2 = None
        for i in range(grid.shape[0] - 1):
            sigma, sigma_next = grid[i], grid[i + 1]
            d = problem["gmm"].denoise(x, sigma)
            h = torch.log(sigma / sigma_next)
            x = torch.exp(-h) * x - torch.expm1(-h) * d
            phi_2 = torch.expm1(-h) / h + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (d - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (d - d_1) / (h_1 / h)
            d_1, d_2, h_1, h_2 = d, d_1, h, h_1
        return x

    steps = [128, 256, 512]
    grids_ = [karras_sigmas(n + 1, 0.002, 80.0, zero=False) for n in steps]
    errors = [_rms(peer_3m(problem["x0"], g), problem["reference"]) for g in grids_]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - 2) <= 0.3, (slope, errors)


# -- closed forms ------------------------------------------------------------------------------

# D(x; σ) = q(λ), λ = −ln σ, independent of x: the PF-ODE in λ is dx/dλ = q(λ) − x, so
# x(λ) = e^(λ0 − λ) x0 + e^(−λ) [F(λ) − F(λ0)] with F(s) = e^s Σ_k c_k Σ_j (−1)^j k!/(k−j)! s^(k−j).
QUADRATIC = (0.3, -0.7, 0.25)


def _q(lam: torch.Tensor) -> torch.Tensor:
    return sum(c * lam**k for k, c in enumerate(QUADRATIC))  # type: ignore[return-value]


def _exact(x0: torch.Tensor, lam0: torch.Tensor, lam1: torch.Tensor) -> torch.Tensor:
    def F(s: torch.Tensor) -> torch.Tensor:
        terms = [
            c * sum((-1) ** j * math.perm(k, j) * s ** (k - j) for j in range(k + 1))
            for k, c in enumerate(QUADRATIC)
        ]
        return torch.exp(s) * sum(terms)

    return torch.exp(lam0 - lam1) * x0 + torch.exp(-lam1) * (F(lam1) - F(lam0))


@pytest.mark.parametrize("name", ["dpmpp_3m", "unipc"])
def test_third_order_steps_are_exact_for_a_quadratic_denoiser(name):
    # After the two warm-up steps every step integrates a D quadratic in λ exactly, so the
    # final error is the warm-up error carried by the exact flow, a factor σ_n / σ_2.
    def denoise(x, sigma):
        return _q(-torch.log(torch.as_tensor(sigma, dtype=F64))) * torch.ones_like(x)

    x0 = torch.tensor([[1.5, -0.2]], dtype=F64)
    n = 12
    grid = torch.exp(-torch.linspace(-1.0, 2.0, n + 1, dtype=F64))
    grid = grid * (1 + 0.1 * torch.sin(torch.arange(n + 1, dtype=F64)))  # uneven λ-steps
    lam = -torch.log(grid)
    seen: dict[int, torch.Tensor] = {}
    x = SAMPLERS[name].fn(denoise, x0, grid, lower_order_final=False, on_step=seen.__setitem__)
    warm_error = seen[1] - _exact(x0, lam[0], lam[2])
    assert warm_error.abs().max() > 1e-6  # the warm-up is not exact: the check has teeth
    torch.testing.assert_close(
        x - _exact(x0, lam[0], lam[-1]), warm_error * grid[-1] / grid[2], rtol=1e-9, atol=1e-14
    )


def test_adams_bashforth_weights_are_the_classic_ones_on_a_uniform_grid():
    # iPNDM's coefficients (Zhang & Chen 2023, eq. 21; Hairer et al. Table III.1.1).
    classic = {1: [1.0], 2: [-1 / 2, 3 / 2], 3: [5 / 12, -16 / 12, 23 / 12]}
    classic[4] = [-9 / 24, 37 / 24, -59 / 24, 55 / 24]
    for k, weights in classic.items():
        times = torch.arange(k, dtype=F64) * -0.1 + 3.0  # σ decreasing by 0.1
        w = multistep.adams_bashforth_weights(times, times[-1] - 0.1)
        torch.testing.assert_close(w, torch.tensor(weights, dtype=F64))


def test_ipndm_is_exact_for_a_cubic_slope_after_warm_up():
    # D(x; σ) = x − σ p(σ) makes dx/dσ = p(σ), a cubic: AB4 integrates it exactly, so only the
    # three warm-up steps err, and that error is carried unchanged (dx/dσ ignores x).
    coeffs = (0.5, -1.0, 0.3, 0.05)

    def denoise(x, sigma):
        sigma = torch.as_tensor(sigma, dtype=F64)
        return x - sigma * sum(c * sigma**k for k, c in enumerate(coeffs))

    def integral(a, b):
        return sum(c * (b ** (k + 1) - a ** (k + 1)) / (k + 1) for k, c in enumerate(coeffs))

    x0 = torch.zeros(1, 2, dtype=F64)
    grid = torch.linspace(3.0, 0.5, 11, dtype=F64) ** 1.3
    seen: dict[int, torch.Tensor] = {}
    x = multistep.ipndm(denoise, x0, grid, lower_order_final=False, on_step=seen.__setitem__)
    warm_error = seen[2] - integral(grid[0], grid[3])
    assert warm_error.abs().max() > 1e-6
    torch.testing.assert_close(x - integral(grid[0], grid[-1]), warm_error, rtol=1e-9, atol=1e-12)


# Step counts in each solver's asymptotic regime on the single Gaussian below.
GAUSSIAN_STEPS = {"dpmpp_3m": [32, 64, 128], "unipc": [32, 64, 128], "ipndm": [128, 256, 512]}


@pytest.mark.parametrize("name", NEW)
def test_order_against_the_exact_flow_of_a_single_gaussian(name):
    # Data N(μ, s² I): D(x; σ) = μ + s²/(s² + σ²)(x − μ) and the PF-ODE flow is closed form,
    # x(σ') = μ + sqrt((s² + σ'²)/(s² + σ²)) (x − μ) (docs/math.md §8): no numerical reference.
    mu, s = 0.7, 0.5
    x0 = SIGMA_MAX * torch.randn(64, 4, generator=torch.Generator().manual_seed(5), dtype=F64)

    def denoise(x, sigma):
        sigma = append_dims(torch.as_tensor(sigma, dtype=F64), x.ndim)
        return mu + s**2 / (s**2 + sigma**2) * (x - mu)

    exact = mu + math.sqrt((s**2 + SIGMA_MIN**2) / (s**2 + SIGMA_MAX**2)) * (x0 - mu)
    steps = GAUSSIAN_STEPS[name]
    errors = []
    for n in steps:
        x = SAMPLERS[name].fn(denoise, x0, karras_sigmas(n + 1, SIGMA_MIN, SIGMA_MAX, zero=False))
        errors.append((x - exact).pow(2).mean().sqrt().item())  # per-dimension RMS
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    print(f"{name}: errors {[f'{e:.2e}' for e in errors]}, slope {slope:.3f}")
    assert abs(slope - SAMPLERS[name].order) <= 0.3 and errors[0] < 4e-3, (slope, errors)  # type: ignore[operator]


# -- NFE and σ = 0 ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("zero", [True, False])
def test_nfe_counted_and_declared(problem, name, zero):
    spec = SAMPLERS[name]
    for n in (1, 2, 3, 7, 16):
        grid = (
            karras_sigmas(n, 0.002, 80.0) if zero else karras_sigmas(n + 1, 0.002, 80.0, zero=False)
        )
        f = CountedFn(problem["gmm"].denoise)
        x = spec.fn(f, problem["x0"], grid)
        assert f.nfe == n == spec.nfe(grid)  # type: ignore[misc]
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", NEW)
def test_last_step_into_zero_returns_a_denoised_value(problem, name):
    gmm, grid = problem["gmm"], karras_sigmas(8, 0.002, 80.0, zero=True)
    inputs: list[torch.Tensor] = []

    def denoise(x, sigma):
        inputs.append(x)
        return gmm.denoise(x, sigma)

    x = SAMPLERS[name].fn(denoise, problem["x0"], grid)
    torch.testing.assert_close(x, gmm.denoise(inputs[-1], grid[-2]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NEW)
def test_lower_order_final_makes_the_last_step_first_order(problem, name):
    # On a grid of < 15 intervals the last step becomes the exponential (or Euler) step with the
    # denoiser at the last point; on a long grid the option changes nothing.
    gmm, fn = problem["gmm"], SAMPLERS[name].fn
    grid = karras_sigmas(6, 0.002, 80.0, zero=False)  # 5 intervals ending at σ_min
    for lower, expect_first_order in ((True, True), (False, False)):
        seen: dict[int, torch.Tensor] = {}
        x = fn(gmm.denoise, problem["x0"], grid, lower_order_final=lower, on_step=seen.__setitem__)
        first = multistep.exponential_step(seen[3], grid[4], grid[5], gmm.denoise(seen[3], grid[4]))
        if name == "ipndm":  # first order in σ: the Euler step
            first = ode.euler(
                DenoiserView(gmm.denoise, None, None).as_ode().field, seen[3], grid[4:]
            )  # type: ignore[arg-type]
        if name == "unipc":  # the last denoised value was taken at the predicted point
            continue
        assert torch.allclose(x, first, rtol=1e-12, atol=1e-12) == expect_first_order
    long = karras_sigmas(20, 0.002, 80.0, zero=True)
    a = fn(gmm.denoise, problem["x0"], long)
    assert torch.equal(a, fn(gmm.denoise, problem["x0"], long, lower_order_final=False))


def test_state_keeps_its_dtype(problem):
    for name in NEW:
        grid = karras_sigmas(6, 0.002, 80.0)
        x = SAMPLERS[name].fn(problem["gmm"].denoise, problem["x0"].float(), grid)
        assert x.dtype == torch.float32 and torch.isfinite(x).all()


# -- schedules -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(grids.SCHEDULES))
@pytest.mark.parametrize("steps", [1, 2, 5, 18])
def test_schedules_keep_the_endpoints_and_decrease(name, steps):
    grid = grids.SCHEDULES[name](steps, 0.002, 80.0)
    assert grid.dtype == F64 and grid.shape == (steps + 1,) and grid[-1] == 0
    assert grid[0] == 80.0 and (steps == 1 or abs(grid[-2] - 0.002) < 1e-15)
    assert bool((grid[:-1] > grid[1:]).all())


def test_schedules_against_their_definitions():
    n = 9
    log = torch.log(grids.logsnr(n, 0.002, 80.0)[:-1])
    torch.testing.assert_close(
        log[1:] - log[:-1], torch.full((n - 1,), math.log(0.002 / 80) / (n - 1), dtype=F64)
    )
    root = grids.karras(n, 0.002, 80.0, rho=3.0)[:-1] ** (1 / 3)  # uniform in σ^(1/ρ)
    torch.testing.assert_close(root[1:] - root[:-1], (root[1] - root[0]).expand(n - 1))
    # time_uniform: VP time t(σ) (EDM Table 1) is evenly spaced
    sigma = grids.time_uniform(n, 0.002, 80.0)[:-1]
    t = (torch.sqrt(0.01 + 2 * 19.9 * torch.log1p(sigma**2)) - 0.1) / 19.9
    torch.testing.assert_close(t[1:] - t[:-1], (t[1] - t[0]).expand(n - 1))
    # ρ → ∞ is logSNR
    torch.testing.assert_close(
        grids.karras(n, 0.002, 80.0, rho=1e6), grids.logsnr(n, 0.002, 80.0), rtol=1e-4, atol=0
    )


def test_regrid_uses_the_views_own_endpoints():
    view_grid = karras_sigmas(7, 0.01, 20.0)  # 7 levels then 0
    new = grids.regrid(view_grid, "logsnr")
    torch.testing.assert_close(new, grids.logsnr(7, 0.01, 20.0))
    no_zero = grids.regrid(view_grid[:-1], "karras", rho="3")  # strings convert
    torch.testing.assert_close(no_zero, grids.karras(7, 0.01, 20.0, rho=3.0)[:-1])
    with pytest.raises(ConfigError, match="unknown schedule"):
        grids.regrid(view_grid, "cosine")
    with pytest.raises(ConfigError, match="no option"):
        grids.regrid(view_grid, "logsnr", rho=3)
    with pytest.raises(ConfigError, match="not a valid float"):
        grids.regrid(view_grid, "karras", rho="x")


def test_sample_with_a_schedule():
    # EDM's own grid is karras ρ = 7 between the same ends; logsnr is karras' ρ → ∞ limit.
    process = EDM(sigma_min=0.002, sigma_max=80.0)
    net = MLP(2, width=16, depth=1).double()
    kwargs = dict(n=8, sampler="dpmpp_3m", steps=6, seed=3, dtype=F64)
    plain = sample(process, net, (2,), **kwargs)  # type: ignore[arg-type]
    same = sample(process, net, (2,), schedule="karras", **kwargs)  # type: ignore[arg-type]
    log = sample(process, net, (2,), schedule="logsnr", **kwargs)  # type: ignore[arg-type]
    steep = sample(process, net, (2,), schedule="karras", schedule_options={"rho": 1e7}, **kwargs)  # type: ignore[arg-type]
    assert torch.equal(plain.x, same.x) and plain.nfe == log.nfe == 6
    assert not torch.allclose(plain.x, log.x, rtol=1e-3, atol=0)
    torch.testing.assert_close(steep.x, log.x, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="adaptive"):  # heun takes one (test_sampling_surface)
        sample(process, net, (2,), n=2, sampler="dopri5", schedule="logsnr")
    with pytest.raises(ConfigError, match="unknown schedule"):
        sample(process, net, (2,), n=2, sampler="unipc", schedule="cosine")


# -- analytical first step (AFS) --------------------------------------------------------------

MULTISTEP = [s.name for s in multistep.SAMPLERS]


@pytest.mark.parametrize("name", MULTISTEP)
def test_afs_skips_the_call_at_sigma_max(problem, name):
    spec, sigmas = SAMPLERS[name], []

    def denoise(x, sigma):
        sigmas.append(float(sigma))
        return problem["gmm"].denoise(x, sigma)

    for n in (2, 3, 7, 16):
        grid = karras_sigmas(n, 0.002, 80.0)
        sigmas.clear()
        f = CountedFn(denoise)
        x = spec.fn(f, problem["x0"], grid, afs=True)
        assert f.nfe == n - 1 == spec.nfe(grid, afs=True) and 80.0 not in sigmas
        assert torch.isfinite(x).all()
    with pytest.raises(ConfigError, match="afs"):
        spec.fn(problem["gmm"].denoise, problem["x0"], karras_sigmas(1, 0.002, 80.0), afs=True)


@pytest.mark.parametrize("name", MULTISTEP)
def test_afs_is_free_for_centred_data(name):
    # Centred data N(0, s² I): D(x; 80) = s²/(s² + 80²) x ≈ 4e-5 x, so D = 0 costs nothing
    # measurable against the exact flow x(σ') = sqrt((s² + σ'²)/(s² + σ²)) x (docs/math.md §8).
    s = 0.5
    x0 = SIGMA_MAX * torch.randn(64, 4, generator=torch.Generator().manual_seed(5), dtype=F64)

    def denoise(x, sigma):
        return s**2 / (s**2 + append_dims(torch.as_tensor(sigma, dtype=F64), x.ndim) ** 2) * x

    exact = math.sqrt((s**2 + SIGMA_MIN**2) / (s**2 + SIGMA_MAX**2)) * x0
    for n in (8, 32, 128):
        grid = karras_sigmas(n + 1, SIGMA_MIN, SIGMA_MAX, zero=False)
        with_afs = _rms(SAMPLERS[name].fn(denoise, x0, grid, afs=True), exact)
        without = _rms(SAMPLERS[name].fn(denoise, x0, grid), exact)
        assert with_afs <= 1.1 * without + 1e-9, (n, with_afs, without)


def test_sample_with_afs_spends_one_nfe_fewer():
    process = EDM(sigma_min=0.002, sigma_max=80.0)
    net = MLP(2, width=16, depth=1).double()
    kwargs = dict(n=4, sampler="unipc", steps=6, seed=3, dtype=F64)
    out = sample(process, net, (2,), options={"afs": True}, **kwargs)  # type: ignore[arg-type]
    assert out.nfe == 5 and torch.isfinite(out.x).all()


# -- stored (knots) and fitted schedules ------------------------------------------------------


def test_knots_schedule_reproduces_its_knots_and_interpolates_log_linearly():
    u = [0.0, 0.1, 0.45, 0.7, 1.0]
    lo, hi = math.log(0.002), math.log(80.0)
    grid = grids.knots(5, 0.002, 80.0, knots=u)  # K = steps: the knots themselves
    torch.testing.assert_close((hi - grid[:-1].log()) / (hi - lo), torch.tensor(u, dtype=F64))
    assert grid[0] == 80.0 and grid[-2] == 0.002 and grid[-1] == 0
    # 9 levels through 5 knots: the odd levels sit halfway (in ln σ) between the even ones
    fine = grids.knots(9, 0.002, 80.0, knots="0,0.1,0.45,0.7,1")[:-1].log()
    torch.testing.assert_close(fine[::2], grid[:-1].log())
    torch.testing.assert_close(fine[1::2], (fine[:-2:2] + fine[2::2]) / 2)
    torch.testing.assert_close(grids.knots(7, 0.002, 80.0), grids.logsnr(7, 0.002, 80.0))
    regridded = grids.regrid(karras_sigmas(5, 0.002, 80.0), "knots", knots="0,0.1,0.45,0.7,1")
    torch.testing.assert_close(regridded, grid)
    for bad in ("0,0.5", "0.1,1", "0,0.5,0.5,1", "0,x,1", "1"):
        with pytest.raises(ConfigError, match="knots"):
            grids.knots(5, 0.002, 80.0, knots=bad)


def test_fit_knots_recovers_a_known_grid_and_is_reproducible():
    # The loss is the squared ln σ distance to the grid of known knots: its minimiser is known.
    target = [0.0, 0.15, 0.3, 0.55, 0.8, 1.0]
    want = grids.knots(6, 0.002, 80.0, knots=target)[1:-2].log()

    def loss(grid: torch.Tensor) -> float:
        return float((grid[1:-2].log() - want).pow(2).sum())

    fitted = grids.fit_knots(loss, 6, 0.002, 80.0, n_knots=6, max_evals=3000)
    assert fitted[0] == 0 and fitted[-1] == 1
    assert max(abs(a - b) for a, b in zip(fitted, target, strict=True)) < 2e-3, fitted
    assert grids.fit_knots(loss, 6, 0.002, 80.0, n_knots=6, max_evals=3000) == fitted
    again = grids.knots(6, 0.002, 80.0, knots=",".join(map(str, fitted)))  # from stored text
    torch.testing.assert_close(again, grids.knots(6, 0.002, 80.0, knots=fitted), rtol=0, atol=0)


def test_fit_knots_statistic_picks_the_typical_draw_or_the_tail():
    # Per-sample losses: two draws want grid A, a third (ten times the weight) wants grid B.
    # The median of {a, a, b} is a, so its minimiser is A; the mean is a quadratic in the knots
    # (ln σ is linear in them), minimised by the weighted mean (2 A + 10 B) / 12.
    a = torch.tensor([0.0, 0.15, 0.3, 0.55, 0.8, 1.0], dtype=F64)
    b = torch.tensor([0.0, 0.3, 0.5, 0.7, 0.85, 1.0], dtype=F64)
    want = [grids.knots(6, SIGMA_MIN, SIGMA_MAX, knots=k)[1:-2].log() for k in (a, b)]

    def per_sample(grid: torch.Tensor) -> torch.Tensor:
        d = [(grid[1:-2].log() - w).pow(2).sum() for w in want]
        return torch.stack([d[0], d[0], 10 * d[1]])

    def fit(statistic: str) -> torch.Tensor:
        knots = grids.fit_knots(
            per_sample, 6, SIGMA_MIN, SIGMA_MAX, max_evals=3000, statistic=statistic
        )
        return torch.tensor(knots, dtype=F64)

    torch.testing.assert_close(fit("median"), a, rtol=0, atol=2e-3)
    torch.testing.assert_close(fit("mean"), (2 * a + 10 * b) / 12, rtol=0, atol=2e-3)
    with pytest.raises(ConfigError, match="statistic"):
        grids.fit_knots(per_sample, 6, SIGMA_MIN, SIGMA_MAX, statistic="mode")


@pytest.mark.slow
def test_fitted_schedule_generalises_to_fresh_draws(problem):
    # Fitted on pilot draws, judged on others: the median error against dopri5 drops.
    gmm = problem["gmm"]
    field = DenoiserView(gmm.denoise, None, None).as_ode().field  # type: ignore[arg-type]
    span = torch.tensor([SIGMA_MAX, SIGMA_MIN, 0.0], dtype=F64)

    def draws(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = SIGMA_MAX * torch.randn(
            64, 3, generator=torch.Generator().manual_seed(seed), dtype=F64
        )
        return x0, ode.dopri5(field, x0, span, rtol=1e-9, atol=1e-9, max_steps=100_000)

    def median(grid: torch.Tensor, x0: torch.Tensor, ref: torch.Tensor) -> float:
        x = multistep.dpmpp_2m(gmm.denoise, x0, grid)
        return float((x - ref).pow(2).mean(1).sqrt().median())

    pilot, test = draws(11), draws(12)
    knots = grids.fit_knots(
        lambda g: median(g, *pilot), 6, SIGMA_MIN, SIGMA_MAX, n_knots=4, max_evals=150
    )
    fitted = median(grids.knots(6, SIGMA_MIN, SIGMA_MAX, knots=knots), *test)
    assert fitted < 0.7 * median(grids.logsnr(6, SIGMA_MIN, SIGMA_MAX), *test), knots
