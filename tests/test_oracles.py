"""Oracle fields (docs/math.md §6, §8) against independent routes: scipy densities, Tweedie's
formula
through autograd, Monte Carlo posterior means, limits and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from physgen_flow.oracle import flow_matching_velocity
from physgen_poisson.oracle import pfgmpp_denoiser
from scipy import stats

from physgen.core.process import DenoiserView, karras_sigmas
from physgen.errors import ConfigError
from physgen.solvers.ode import dopri5, rk4
from physgen.testing.oracles import GaussianMixture, empirical_denoiser, gaussian_flow

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: intra-op threads only add synchronisation cost (large on a busy 2-core box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mixture(seed: int = 0, k: int = 3, n: int = 3) -> GaussianMixture:
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=gen, dtype=F64) + 0.2
    means = 2 * torch.randn(k, n, generator=gen, dtype=F64)
    stds = 0.2 + torch.rand(k, generator=gen, dtype=F64)
    return GaussianMixture(weights, means, stds)


def _points(b: int, n: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(b, n, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- GaussianMixture ---------------------------------------------------------------------


def test_log_prob_matches_scipy_mixture():
    gmm = _mixture()
    x = _points(20, 3, seed=1)
    w, mu, s = gmm.weights.numpy(), gmm.means.numpy(), gmm.stds.numpy()
    dens = sum(
        w[k] * stats.multivariate_normal(mu[k], s[k] ** 2 * np.eye(3)).pdf(x.numpy())
        for k in range(3)
    )
    np.testing.assert_allclose(gmm.log_prob(x).numpy(), np.log(dens), rtol=1e-10)


@pytest.mark.parametrize("sigma", [0.05, 0.7, 4.0])
def test_denoiser_is_tweedie_of_the_smoothed_mixture(sigma):
    # Tweedie: D(x; σ) = x + σ² ∇ log p_σ(x), p_σ the mixture with stds sqrt(s² + σ²).
    gmm = _mixture()
    smoothed = GaussianMixture(gmm.weights, gmm.means, (gmm.stds**2 + sigma**2).sqrt())
    x = _points(16, 3, seed=2).requires_grad_(True)
    (grad,) = torch.autograd.grad(smoothed.log_prob(x).sum(), x)
    expected = x.detach() + sigma**2 * grad
    torch.testing.assert_close(gmm.denoise(x.detach(), sigma), expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gmm.score(x.detach(), sigma), grad, rtol=1e-9, atol=1e-10)


def test_denoiser_matches_monte_carlo_posterior_mean():
    # E[y | y + σ n = x] by self-normalised importance sampling over draws of the mixture.
    gmm = _mixture(seed=3, n=2)
    y = gmm.sample(400_000, generator=torch.Generator().manual_seed(0))
    sigma = 0.8
    x = _points(4, 2, seed=4, scale=1.5)
    logw = -((x[:, None, :] - y[None]) ** 2).sum(-1) / (2 * sigma**2)
    w = torch.softmax(logw, dim=1)
    mc = w @ y
    ess = 1 / (w**2).sum(1)  # effective sample size per x
    assert ess.min() > 1000
    torch.testing.assert_close(gmm.denoise(x, sigma), mc, rtol=0, atol=0.03)


def test_denoiser_per_example_sigma_and_sigma_zero():
    gmm = _mixture()
    x = _points(5, 3, seed=5)
    sigmas = torch.tensor([0.0, 0.1, 0.5, 1.0, 3.0], dtype=F64)
    batched = gmm.denoise(x, sigmas)
    for i in range(5):
        torch.testing.assert_close(batched[i : i + 1], gmm.denoise(x[i : i + 1], sigmas[i]))
    assert torch.equal(batched[0], x[0])  # σ = 0 returns x exactly
    # the score at σ = 0 is that of the data density itself
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.log_prob(xg).sum(), xg)
    torch.testing.assert_close(gmm.score(x, 0.0), grad)


def test_small_stds_are_stable_in_float32():
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    gmm = GaussianMixture(torch.ones(3), means, torch.full((3,), 1e-3))
    x = torch.tensor([[0.9, 0.05], [5.0, 5.0], [-3.0, 0.4]])
    for sigma in (0.0, 1e-3, 0.01):
        d = gmm.denoise(x, sigma)
        assert d.dtype == torch.float32 and torch.isfinite(d).all()
    # tiny σ and far-off x: responsibilities are one-hot on the nearest component
    near = gmm.denoise(x, torch.tensor(1e-3))
    torch.testing.assert_close(near[0], means[1], atol=0.06, rtol=0)
    assert torch.isfinite(gmm.log_prob(x)).all()


def test_sample_moments_and_reproducibility():
    gmm = _mixture(seed=6)
    draws = gmm.sample(200_000, generator=torch.Generator().manual_seed(1))
    w, mu, s = gmm.weights, gmm.means, gmm.stds
    mean = w @ mu
    second = (w[:, None, None] * (mu[:, :, None] * mu[:, None, :])).sum(0) + (w * s**2).sum() * (
        torch.eye(3, dtype=F64)
    )
    cov = second - mean[:, None] * mean[None, :]
    torch.testing.assert_close(draws.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), cov, atol=0.05, rtol=0)
    again = gmm.sample(200_000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, draws)


def test_dtype_and_device_follow_inputs():
    gmm = GaussianMixture.random(4, 2, std=0.3, seed=0)
    assert gmm.means.dtype == torch.float32 and gmm.dim == 2
    x64 = torch.zeros(3, 2, dtype=F64)
    assert gmm.denoise(x64, 0.5).dtype == F64
    assert gmm.to(dtype=F64).sample(3).dtype == F64
    x32 = torch.zeros(3, 2)
    assert gmm.to(dtype=F64).denoise(x32, torch.tensor(0.5, dtype=F64)).dtype == torch.float32
    # event shapes are flattened: [B, 1, 2] works like [B, 2]
    assert gmm.denoise(x32[:, None], 0.5).shape == (3, 1, 2)


def test_random_and_ring():
    a = GaussianMixture.random(4, 3, std=0.2, seed=7)
    b = GaussianMixture.random(4, 3, std=0.2, seed=7)
    assert torch.equal(a.means, b.means) and torch.equal(a.weights, b.weights)
    ring = GaussianMixture.ring(8, radius=2.0, std=0.1, dtype=F64)
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((8,), 2.0, dtype=F64))
    # symmetric under rotation by 2π/8
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    rot = torch.tensor([[c, -s], [s, c]], dtype=F64)
    x = _points(10, 2, seed=8)
    torch.testing.assert_close(ring.log_prob(x), ring.log_prob(x @ rot.T))


@pytest.mark.parametrize(
    "weights, means, stds",
    [
        ([1.0, 1.0], [[0.0], [1.0]], [1.0]),  # stds of the wrong length
        ([1.0, -1.0], [[0.0], [1.0]], [1.0, 1.0]),  # negative weight
        ([1.0, 1.0], [[0.0], [1.0]], [1.0, 0.0]),  # zero std
        ([1.0], [0.0], [1.0]),  # means not [K, N]
    ],
)
def test_invalid_mixtures_are_config_errors(weights, means, stds):
    with pytest.raises(ConfigError) as info:
        GaussianMixture(torch.tensor(weights), torch.tensor(means), torch.tensor(stds))
    assert "\n" not in str(info.value)


# -- finite data sets -------------------------------------------------------------------


def test_empirical_denoiser_limits():
    data = _points(50, 3, seed=9)
    denoise = empirical_denoiser(data)
    x = data[:5] + 1e-3 * _points(5, 3, seed=10, scale=1.0)
    torch.testing.assert_close(denoise(x, 1e-4), data[:5])  # tiny σ: the nearest point
    torch.testing.assert_close(denoise(x, 0.0), data[:5])  # σ = 0 is its limit
    torch.testing.assert_close(denoise(data[:5], 0.0), data[:5])  # on a data point
    far = denoise(x, 1e4)  # huge σ: the data mean
    torch.testing.assert_close(far, data.mean(0).expand(5, 3), atol=1e-5, rtol=0)


def test_empirical_denoiser_equals_mixture_of_narrow_components():
    # The empirical distribution is the limit s → 0 of an equal-weight mixture on the data.
    data = _points(30, 2, seed=11)
    narrow = GaussianMixture(torch.ones(30, dtype=F64), data, torch.full((30,), 1e-7, dtype=F64))
    x = _points(8, 2, seed=12)
    sigma = torch.linspace(0.2, 3.0, 8, dtype=F64)
    torch.testing.assert_close(empirical_denoiser(data)(x, sigma), narrow.denoise(x, sigma))


def test_empirical_denoiser_chunking_is_invisible(monkeypatch):
    data, x = _points(300, 4, seed=13), _points(7, 4, seed=14)
    whole = empirical_denoiser(data)(x, 0.5)
    monkeypatch.setattr("physgen.testing.oracles._CHUNK_ELEMENTS", 7 * 4 * 16)  # 16 points a chunk
    torch.testing.assert_close(empirical_denoiser(data)(x, 0.5), whole)


def test_pfgmpp_denoiser_large_D_is_the_gaussian_one():
    data, x = _points(40, 3, seed=15), _points(10, 3, seed=16)
    sigma = torch.linspace(0.1, 3.0, 10, dtype=F64)
    gaussian = empirical_denoiser(data)(x, sigma)
    torch.testing.assert_close(pfgmpp_denoiser(data, 1e7)(x, sigma), gaussian, atol=1e-5, rtol=0)
    torch.testing.assert_close(pfgmpp_denoiser(data, math.inf)(x, sigma), gaussian)
    # float32 keeps the large-D limit too (log1p, not log of a sum)
    d32 = pfgmpp_denoiser(data.float(), 1e7)(x.float(), sigma.float())
    torch.testing.assert_close(d32, gaussian.float(), atol=1e-4, rtol=0)


def test_pfgmpp_denoiser_two_points_closed_form():
    # Original PFGM (D = 1) in N = 1: weights ∝ ((x − y)² + σ²)^(−1); D = 4: ^(−5/2), r² = 4σ².
    data = torch.tensor([[-1.0], [2.0]], dtype=F64)
    x, sigma = torch.tensor([[0.3]], dtype=F64), 0.5
    for D in (1.0, 4.0):
        w = [((0.3 - y) ** 2 + D * sigma**2) ** (-(1 + D) / 2) for y in (-1.0, 2.0)]
        expected = (-1.0 * w[0] + 2.0 * w[1]) / (w[0] + w[1])
        got = pfgmpp_denoiser(data, D)(x, sigma)
        torch.testing.assert_close(got, torch.tensor([[expected]], dtype=F64))
    assert torch.equal(pfgmpp_denoiser(data, 4.0)(data, 0.0), data)  # σ = 0 on a data point
    with pytest.raises(ConfigError):
        pfgmpp_denoiser(data, 0.0)


def test_flow_matching_velocity_via_the_edm_link():
    # x_t / t = x_1 + ((1 − t)/t) x_0 (docs/math.md §3): x̂_1 = D(x_t / t; (1 − t)/t).
    data = _points(25, 2, seed=17)
    velocity, denoise = flow_matching_velocity(data), empirical_denoiser(data)
    x = _points(6, 2, seed=18)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.99], dtype=F64)
    x1 = denoise(x / t[:, None], (1 - t) / t)
    torch.testing.assert_close(velocity(x, t), (x1 - x) / (1 - t[:, None]))
    torch.testing.assert_close(velocity(x, 0.0), data.mean(0) - x)  # t = 0: towards the mean


def test_flow_matching_ode_carries_noise_onto_data_points():
    data = _points(10, 2, seed=19)
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(20), dtype=F64)
    grid = torch.tensor([0.0, 0.999], dtype=F64)
    x = dopri5(flow_matching_velocity(data), x0, grid, rtol=1e-7, atol=1e-7)
    nearest = torch.cdist(x, data).min(dim=1).values
    assert nearest.max() < 0.01


# -- the Gaussian flow map ------------------------------------------------------------------


def test_gaussian_flow_composes_and_is_the_identity_at_equal_sigma():
    x, mu = _points(5, 3, seed=21), torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    torch.testing.assert_close(gaussian_flow(x, 1.3, 1.3, mu, 0.7), x)
    two = gaussian_flow(gaussian_flow(x, 5.0, 1.0, mu, 0.7), 1.0, 0.1, mu, 0.7)
    torch.testing.assert_close(two, gaussian_flow(x, 5.0, 0.1, mu, 0.7))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_ode_with_the_gaussian_denoiser_reproduces_gaussian_flow(dtype):
    mu, s = torch.tensor([0.5, -1.0, 2.0], dtype=F64), 0.7
    gaussian = GaussianMixture(torch.ones(1, dtype=F64), mu[None], torch.tensor([s], dtype=F64))
    field = DenoiserView(denoise=gaussian.denoise, sigmas=None, prior=None).as_ode().field  # type: ignore[arg-type]
    x = _points(8, 3, seed=22, scale=5.0).to(dtype)
    grid = karras_sigmas(200, 0.02, 5.0, zero=False)
    exact = gaussian_flow(x, 5.0, 0.02, mu.to(dtype), s)
    tol = 1e-7 if dtype == F64 else 1e-5
    torch.testing.assert_close(rk4(field, x, grid), exact, atol=tol, rtol=0)
    adaptive = dopri5(field, x, grid, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(adaptive, exact, atol=max(tol, 1e-6), rtol=0)
