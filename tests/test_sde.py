"""Stochastic samplers (physgen.solvers.sde) against closed-form Gaussian targets (docs/math.md §8)
and an exact 2-D Gaussian mixture (docs/math.md §6).

Tolerances are stated beside each assertion: sampling error (a standard error, SE) plus the
sampler's own discretisation bias, measured once and noted.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from physgen.core.process import CountedFn, append_dims, karras_sigmas
from physgen.core.rng import StackedGenerator
from physgen.errors import ConfigError
from physgen.registry import get_registry
from physgen.solvers import sde

MU = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
S = 0.5  # data standard deviation
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def gaussian_denoiser(mu: Tensor, s: float):
    """Exact D(x; σ) = μ + s²/(s² + σ²) (x − μ) of y ~ N(μ, s² I) (docs/math.md §8)."""

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = append_dims(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x.ndim)
        return mu.to(x) + s**2 / (s**2 + sigma**2) * (x - mu.to(x))

    return denoise


def gaussian_prior(n: int, mu: Tensor, s: float, sigma: float, seed: int) -> Tensor:
    """Exact draws of p_σ = N(μ, (s² + σ²) I)."""
    g = torch.Generator().manual_seed(seed)
    return mu + math.sqrt(s**2 + sigma**2) * torch.randn(n, len(mu), generator=g, dtype=mu.dtype)


def run(fn, x: Tensor, grid: Tensor, seed: int, f=None, **options) -> Tensor:
    f = f or gaussian_denoiser(MU, S)
    return fn(f, x, grid, generator=torch.Generator().manual_seed(seed), **options)


def assert_moments(x: Tensor, mu: Tensor, var: float, *, mean_tol: float, var_rtol: float):
    assert (x.mean(0) - mu).abs().max() < mean_tol, (x.mean(0) - mu).tolist()
    rel = (x.var(0).mean() / var - 1).abs().item()
    assert rel < var_rtol, f"variance off by {rel:.3%}"


# --------------------------------------------------------------------------------------
# Gaussian targets: mean and variance
# --------------------------------------------------------------------------------------


# n = 4000 in 4-D: SE of a coordinate mean 0.5/√4000 = 0.008; SE of the pooled variance
# √(2/16000) = 1.1 %. Discretisation bias of the variance on these grids: em +2.1 % (512
# steps, exact recursion), heun_churn ≈ +2 % (128 steps, no window); tolerances are bias
# + 4 SE, rounded up. Measured: em mean 0.027, variance +2.4 %; heun_churn 0.011, −0.5 %.
@pytest.mark.parametrize(
    ("name", "steps", "options", "var_rtol"),
    [
        ("em", 512, {}, 0.07),
        ("heun_churn", 128, {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0}, 0.07),
    ],
)
def test_gaussian_target_moments(name: str, steps: int, options: dict, var_rtol: float):
    fn = getattr(sde, name)
    x0 = gaussian_prior(4000, MU, S, SIGMA_MAX, seed=0)
    x = run(fn, x0, karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), seed=1, **options)
    assert_moments(x, MU, S**2, mean_tol=0.04, var_rtol=var_rtol)


@pytest.mark.parametrize(
    ("snr_norm", "var_rtol"),
    [
        # per-example steps leave p ||∇log p||² invariant: measured +9.3 % in 64-D
        ("example", 0.13),
        # batch-mean steps: the O(snr²) corrector bias, measured +2.9 % (EM alone: +8.7 %)
        ("batch", 0.05),
    ],
)
def test_pc_gaussian_target(snr_norm: str, var_rtol: float):
    # 64-D, 1000 samples: SE of a coordinate mean 0.016, of the pooled variance 0.56 %.
    mu = torch.linspace(-2, 2, 64, dtype=torch.float64)
    x0 = gaussian_prior(1000, mu, S, SIGMA_MAX, seed=0)
    grid = karras_sigmas(128, SIGMA_MIN, SIGMA_MAX)
    x = run(sde.pc, x0, grid, seed=1, f=gaussian_denoiser(mu, S), snr_norm=snr_norm)
    assert_moments(x, mu, S**2, mean_tol=0.07, var_rtol=var_rtol)


def test_em_weak_order_matches_declaration():
    # Weak error of the variance (a smooth functional) must halve as the steps double.
    # 100k 1-D samples: SE of the variance 0.45 %, against biases of 42 %, 19 %, 8.8 %.
    mu = torch.zeros(1, dtype=torch.float64)
    x0 = gaussian_prior(100_000, mu, S, SIGMA_MAX, seed=0)
    errors = []
    for steps in (32, 64, 128):
        x = run(
            sde.em,
            x0,
            karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX),
            seed=1,
            f=gaussian_denoiser(mu, S),
        )
        errors.append(abs(x.var().item() / S**2 - 1))
    slopes = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    declared = next(s.order for s in sde.SAMPLERS if s.name == "em")
    assert all(abs(p - declared) < 0.3 for p in slopes), slopes  # measured 1.19, 1.09


def test_heun_churn_without_churn_is_second_order_heun():
    # S_churn = 0 is EDM Algorithm 1: compare with the exact PF-ODE flow map (docs/math.md §8)
    # from σ_max to σ_min followed by the final Euler step onto D(x; σ_min).
    x0 = gaussian_prior(16, MU, S, SIGMA_MAX, seed=0)
    ratio = math.sqrt((S**2 + SIGMA_MIN**2) / (S**2 + SIGMA_MAX**2))
    exact = MU + S**2 / (S**2 + SIGMA_MIN**2) * ratio * (x0 - MU)
    errors = []
    for steps in (32, 64):
        grid = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
        errors.append((sde.heun_churn(gaussian_denoiser(MU, S), x0, grid) - exact).abs().max())
    assert errors[1] < 0.01  # measured 0.0058
    assert abs(math.log2(errors[0] / errors[1]) - 2) < 0.3  # measured 2.10


# --------------------------------------------------------------------------------------
# Langevin
# --------------------------------------------------------------------------------------


def test_langevin_at_one_level_reaches_smoothed_gaussian():
    # A grid without 0 means no final denoise: T steps of Langevin at σ alone. Stationary law
    # of this discretisation on N(μ, v): variance v / (1 − α/(4v)) = +0.5 % at α = 0.01,
    # v = s² + σ² = 0.5; T = 1000 contracts the start by (1 − α/(2v))^T = e^-10.
    sigma = 0.5
    x0 = MU + 3.0 * torch.randn(
        4000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    grid = torch.tensor([sigma], dtype=torch.float64)
    x = run(sde.langevin, x0, grid, seed=1, corrector_steps=1000, eps=0.01)
    # SE: mean √(0.5/4000) = 0.011, variance 1.1 %; tolerances 4 SE + bias.
    # Measured: mean 0.016, variance +1.3 %.
    assert_moments(x, MU, S**2 + sigma**2, mean_tol=0.045, var_rtol=0.05)


def test_annealed_langevin_lands_on_gaussian():
    # NCSN schedule: 10 geometric levels 10 → 0.01, T = 100, then denoise at σ_L.
    levels = torch.logspace(1, -2, 10, dtype=torch.float64)
    grid = torch.cat([levels, levels.new_zeros(1)])
    x0 = gaussian_prior(4000, MU, S, 10.0, seed=0)
    x = run(sde.langevin, x0, grid, seed=1, corrector_steps=100, eps=1e-4)
    # measured: mean 0.010, variance +2.3 %
    assert_moments(x, MU, S**2, mean_tol=0.04, var_rtol=0.06)


def test_default_eps_runs_on_an_edm_grid_and_keeps_ncsn_on_its_own():
    # NCSN's 2e-5 diverges below σ_L = 0.0045 (EDM's σ_min = 0.002: bound 1.6e-5); the default
    # step must run there, with the default T = 10, and land on the target.
    grid = karras_sigmas(64, SIGMA_MIN, SIGMA_MAX)  # 64 levels 80 → 0.002, then 0
    x0 = gaussian_prior(4000, MU, S, SIGMA_MAX, seed=0)
    x = run(sde.langevin, x0, grid, seed=1)
    # SE: mean 0.008, variance 1.1 %; the step's bias (docstring) measured: mean 0.011,
    # variance +6.0 %.
    assert_moments(x, MU, S**2, mean_tol=0.035, var_rtol=0.1)
    # On NCSN's grid (σ_L = 0.01) the default is the paper's eps = 2e-5, draw for draw.
    ncsn = torch.cat([torch.logspace(1, -2, 10, dtype=torch.float64), torch.zeros(1)])
    x0 = gaussian_prior(8, MU, S, 10.0, seed=0)
    torch.testing.assert_close(
        run(sde.langevin, x0, ncsn, seed=2), run(sde.langevin, x0, ncsn, seed=2, eps=2e-5),
        rtol=0, atol=0,
    )  # fmt: skip
    spec = get_registry().sampler("langevin")  # --opt eps=... arrives as text
    with pytest.raises(ConfigError, match="not a valid float"):
        spec.parse_options({"eps": "small"})
    torch.testing.assert_close(
        run(sde.langevin, x0, ncsn, seed=2, **spec.parse_options({"eps": "1e-4"})),
        run(sde.langevin, x0, ncsn, seed=2, eps=1e-4),
    )


# --------------------------------------------------------------------------------------
# Predictor–corrector on an exact 2-D Gaussian mixture
# --------------------------------------------------------------------------------------

GMM_MEANS = torch.tensor([[-1.0, 0.0], [1.5, 1.0]], dtype=torch.float64)
GMM_STDS = torch.tensor([0.3, 0.5], dtype=torch.float64)
GMM_WEIGHTS = torch.tensor([0.4, 0.6], dtype=torch.float64)


def gmm_denoiser(x: Tensor, sigma: Tensor) -> Tensor:
    """docs/math.md §6: D = Σ_k γ_k (μ_k + s_k²/(s_k² + σ²)(x − μ_k)),
    γ_k ∝ w_k N(x; μ_k, s_k² + σ²)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype)
    var = GMM_STDS**2 + sigma**2  # [K]
    diff = x[:, None, :] - GMM_MEANS  # [B, K, 2]
    log_resp = GMM_WEIGHTS.log() - 0.5 * diff.pow(2).sum(-1) / var - var.log()  # N = 2
    resp = log_resp.softmax(-1)[..., None]
    return (resp * (GMM_MEANS + (GMM_STDS**2 / var)[:, None] * diff)).sum(1)


def gmm_sample(n: int, generator: torch.Generator) -> Tensor:
    k = torch.multinomial(GMM_WEIGHTS, n, replacement=True, generator=generator)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return GMM_MEANS[k] + GMM_STDS[k, None] * noise


def sliced_w2(a: Tensor, b: Tensor, *, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 between equal-size sample sets: 1-D W2 of sorted projections."""
    theta = torch.randn(
        a.shape[1], projections, generator=torch.Generator().manual_seed(seed), dtype=a.dtype
    )
    theta = theta / theta.norm(dim=0)
    pa, pb = (a @ theta).sort(0).values, (b @ theta).sort(0).values
    return (pa - pb).pow(2).mean().sqrt().item()


def test_pc_lands_on_gaussian_mixture():
    g = torch.Generator().manual_seed(0)
    reference, second = gmm_sample(4000, g), gmm_sample(4000, g)
    floor = sliced_w2(second, reference)  # two exact sample sets: measured 0.035
    x0 = SIGMA_MAX * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    grid = karras_sigmas(128, SIGMA_MIN, SIGMA_MAX)
    x = run(sde.pc, x0, grid, seed=1, f=gmm_denoiser, snr_norm="batch")
    # measured 0.037; snr_norm="example" gives 0.88 (see langevin_corrector), exact draws of
    # the mixture with its weights swapped give 0.60
    assert sliced_w2(x, reference) < 2 * floor


# --------------------------------------------------------------------------------------
# Randomness, NFE, options
# --------------------------------------------------------------------------------------

ALL = {
    "em": {},
    "heun_churn": {"S_churn": 10.0},
    "langevin": {"corrector_steps": 3, "eps": 1e-5},
    # per-example step sizes: the batch-mean default makes a sample depend on its batch
    "pc": {"corrector_steps": 2, "snr_norm": "example"},
}


@pytest.mark.parametrize("name", list(ALL))
def test_same_seed_same_samples_and_batch_split(name: str):
    fn, options = getattr(sde, name), ALL[name]
    grid = karras_sigmas(8, SIGMA_MIN, SIGMA_MAX)
    x0 = gaussian_prior(6, MU, S, SIGMA_MAX, seed=0)
    a = run(fn, x0, grid, seed=3, **options)
    b = run(fn, x0, grid, seed=3, **options)
    assert torch.equal(a, b)
    assert not torch.equal(a, run(fn, x0, grid, seed=4, **options))

    def stacked(start: int, count: int) -> Tensor:
        gen = StackedGenerator.for_samples(7, start, count)
        return fn(
            gaussian_denoiser(MU, S), x0[start : start + count], grid, generator=gen, **options
        )

    torch.testing.assert_close(
        torch.cat([stacked(0, 4), stacked(4, 2)]), stacked(0, 6), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("grid_zero", [True, False])
def test_declared_nfe_and_on_step(name: str, grid_zero: bool):
    spec = next(s for s in sde.SAMPLERS if s.name == name)
    assert spec.view == "score" and spec.stochastic
    options = ALL[name]
    grid = karras_sigmas(5, SIGMA_MIN, SIGMA_MAX, zero=grid_zero)
    f = CountedFn(gaussian_denoiser(MU, S))
    steps: list[int] = []
    x0 = gaussian_prior(3, MU, S, SIGMA_MAX, seed=0).float()
    x = getattr(sde, name)(
        f,
        x0,
        grid,
        generator=torch.Generator().manual_seed(0),
        on_step=lambda i, x: steps.append(i),
        **options,
    )
    counted = {k: v for k, v in options.items() if k == "corrector_steps"}
    assert f.nfe == spec.nfe(grid, **counted)
    assert steps == list(range(len(steps))) and len(steps) >= len(grid) - 1
    assert x.dtype == torch.float32 and x.shape == x0.shape and torch.isfinite(x).all()
    assert set(spec.options) <= set(getattr(sde, name).__kwdefaults__)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("heun_churn", {"S_churn": -1.0}),
        ("langevin", {"corrector_steps": 0}),
        ("langevin", {"eps": 0.0}),
        ("langevin", {"eps": 2e-5}),  # ≥ 4 σ_L² = 1.6e-5 on an EDM grid: diverges
        ("pc", {"snr": -0.1}),
        ("pc", {"snr_norm": "mean"}),
    ],
)
def test_bad_options_are_config_errors(name: str, options: dict):
    with pytest.raises(ConfigError):
        run(
            getattr(sde, name),
            torch.zeros(2, 4, dtype=torch.float64),
            karras_sigmas(3, SIGMA_MIN, SIGMA_MAX),
            seed=0,
            **options,
        )
