"""Exact log-likelihood (physgen.sampling.likelihood) against closed-form smoothed densities.

Gaussian data ``y ~ N(μ, Σ)`` under ``x = y + σ n`` has ``p_σ = N(μ, Σ + σ² I)`` and denoiser
``D(x; σ) = μ + Σ (Σ + σ² I)⁻¹ (x − μ)`` (docs/math.md §8); a Gaussian mixture has the denoiser of
docs/math.md §6 and the log-sum-exp smoothed density. Integrating from σ_min, the likelihood is that
of the data smoothed at σ_min, so the reference is ``log p_{σ_min}(x)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from physgen.core.process import (
    DenoiserView,
    ODEView,
    ScoreView,
    append_dims,
    gaussian_logp,
    gaussian_prior,
    karras_sigmas,
)
from physgen.errors import ConfigError
from physgen.sampling.likelihood import DIVERGENCES, LikelihoodResult, bits_per_dim, log_likelihood

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
TIGHT = {"rtol": 1e-7, "atol": 1e-7}


def mvn_logp(x: Tensor, mu: Tensor, cov: Tensor) -> Tensor:
    """log N(x; μ, cov) per example, independently of the code under test."""
    return torch.distributions.MultivariateNormal(mu, covariance_matrix=cov).log_prob(x)


def gaussian_view(mu: Tensor, cov: Tensor, *, exact_prior: bool = True) -> ODEView:
    """PF-ODE of y ~ N(μ, cov) with the exact denoiser; prior at σ_max exact or N(0, σ_max²)."""
    eye = torch.eye(len(mu), dtype=mu.dtype)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:  # in the dtype of x, as a network is
        sigma = append_dims(torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0]), 3)
        gain = cov.to(x) @ torch.linalg.inv(cov.to(x) + sigma**2 * eye.to(x))  # [B, N, N]
        return mu.to(x) + (gain @ (x - mu.to(x))[..., None])[..., 0]

    if exact_prior:
        prior_cov = cov + SIGMA_MAX**2 * eye
        prior_logp = lambda x: mvn_logp(x, mu.to(x), prior_cov.to(x))  # noqa: E731
    else:
        prior_logp = gaussian_logp(SIGMA_MAX)
    view = ScoreView(
        denoise=denoise,
        sigmas=lambda steps: karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX),
        prior=gaussian_prior(SIGMA_MAX),
        prior_logp=prior_logp,
    )
    return view.as_ode()


def draw(n: int, mu: Tensor, cov: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(cov)
    return mu + torch.randn(n, len(mu), generator=g, dtype=mu.dtype) @ chol.T


MU3 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
ISO3 = 0.7**2 * torch.eye(3, dtype=torch.float64)
# a full covariance: the field's Jacobian is not diagonal, so Rademacher probes have variance
FULL3 = torch.tensor([[1.0, 0.6, -0.3], [0.6, 0.8, 0.2], [-0.3, 0.2, 0.5]], dtype=torch.float64)
SMOOTH = SIGMA_MIN**2 * torch.eye(3, dtype=torch.float64)


@pytest.mark.parametrize("cov", [ISO3, FULL3], ids=["isotropic", "full"])
def test_gaussian_exact_trace_matches_closed_form(cov: Tensor):
    x = draw(64, MU3, cov, seed=0)
    x = torch.cat([x, MU3 + 3 * torch.ones(4, 3, dtype=torch.float64)])  # a few far points
    result = log_likelihood(gaussian_view(MU3, cov), x, **TIGHT)
    exact = mvn_logp(x, MU3, cov + SMOOTH)
    per_dim = (result.logp - exact).abs().max().item() / 3
    assert per_dim < 0.01  # measured 8e-7 (isotropic), 4e-6 (full) nats/dim
    assert result.logp.shape == (68,) and result.stderr is None and result.nfe > 0


def test_float32_state_at_default_tolerance():
    x = draw(32, MU3, ISO3, seed=1)
    result = log_likelihood(gaussian_view(MU3, ISO3), x.float())
    exact = mvn_logp(x, MU3, ISO3 + SMOOTH)
    assert result.logp.dtype == torch.float32
    assert (result.logp.double() - exact).abs().max().item() / 3 < 0.01  # measured 9e-5


def test_standard_prior_on_centred_data():
    # gaussian_logp(σ_max), i.e. N(0, σ_max² I) for the exact N(0, (s² + σ_max²) I), costs
    # O(N s² / σ_max²) on centred data. (Off-centre data would add O(|μ| / σ_max).)
    zero = torch.zeros(3, dtype=torch.float64)
    x = draw(32, zero, ISO3, seed=1)
    result = log_likelihood(gaussian_view(zero, ISO3, exact_prior=False), x, **TIGHT)
    exact = mvn_logp(x, zero, ISO3 + SMOOTH)
    assert (result.logp - exact).abs().max().item() / 3 < 0.01  # measured 2e-4


@pytest.mark.parametrize("divergence", ["hutchinson-rademacher", "hutchinson-gaussian"])
def test_hutchinson_is_unbiased_within_its_standard_error(divergence: str):
    x = draw(64, MU3, FULL3, seed=2)
    g = torch.Generator().manual_seed(3)
    result = log_likelihood(
        gaussian_view(MU3, FULL3),
        x,
        divergence=divergence,
        hutchinson_samples=16,
        generator=g,
        rtol=1e-6,
        atol=1e-6,
    )
    exact = mvn_logp(x, MU3, FULL3 + SMOOTH)
    error = result.logp - exact
    # unbiased: the batch-mean error within 3 of its standard errors (measured −0.3, −0.3)
    assert abs(error.mean() / (result.stderr.pow(2).sum().sqrt() / len(x))) < 3
    # honest standard errors: the spread of the errors matches them (measured 0.93, 1.06);
    # per-example t statistics are unreliable for Rademacher probes in 3-D (4 sign patterns)
    ratio = error.pow(2).mean().sqrt() / result.stderr.pow(2).mean().sqrt()
    assert 0.7 < ratio < 1.4


def test_rademacher_is_exact_for_a_diagonal_jacobian():
    # εᵀ J ε = tr J when J is diagonal and ε_i = ±1: an independent check of the probes.
    x = draw(16, MU3, ISO3, seed=4)
    g = torch.Generator().manual_seed(5)
    view = gaussian_view(MU3, ISO3)
    hutch = log_likelihood(
        view, x, divergence="hutchinson-rademacher", hutchinson_samples=2, generator=g, **TIGHT
    )
    torch.testing.assert_close(hutch.logp, mvn_logp(x, MU3, ISO3 + SMOOTH), atol=1e-4, rtol=0)
    assert hutch.stderr is not None and hutch.stderr.abs().max() < 1e-6


# -- a 2-component Gaussian mixture in 2-D --------------------------------------------------

GMM_MEANS = torch.tensor([[-1.0, 0.0], [1.5, 1.0]], dtype=torch.float64)
GMM_STDS = torch.tensor([0.3, 0.5], dtype=torch.float64)
GMM_WEIGHTS = torch.tensor([0.4, 0.6], dtype=torch.float64)


def gmm_logp(x: Tensor, sigma: float) -> Tensor:
    """log Σ_k w_k N(x; μ_k, (s_k² + σ²) I) per example."""
    var = GMM_STDS**2 + sigma**2
    comps = torch.distributions.Normal(GMM_MEANS, var.sqrt()[:, None])  # batch [K, 2]
    return torch.logsumexp(GMM_WEIGHTS.log() + comps.log_prob(x[:, None, :]).sum(-1), dim=-1)


def gmm_denoise(x: Tensor, sigma: Tensor) -> Tensor:
    """docs/math.md §6: D = Σ_k γ_k (μ_k + s_k²/(s_k² + σ²)(x − μ_k))."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])[:, None]  # [B, 1]
    var = GMM_STDS**2 + sigma**2  # [B, K]
    diff = x[:, None, :] - GMM_MEANS  # [B, K, 2]
    log_resp = GMM_WEIGHTS.log() - 0.5 * diff.pow(2).sum(-1) / var - var.log()
    resp = log_resp.softmax(-1)[..., None]
    return (resp * (GMM_MEANS + (GMM_STDS**2 / var)[..., None] * diff)).sum(1)


def test_gaussian_mixture_exact_trace_matches_smoothed_density():
    view = DenoiserView(
        denoise=gmm_denoise,
        sigmas=lambda steps: karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX),
        prior=gaussian_prior(SIGMA_MAX),
        prior_logp=lambda x: gmm_logp(x, SIGMA_MAX),
    ).as_ode()
    g = torch.Generator().manual_seed(6)
    k = torch.multinomial(GMM_WEIGHTS, 48, replacement=True, generator=g)
    x = GMM_MEANS[k] + GMM_STDS[k, None] * torch.randn(48, 2, generator=g, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([[0.2, 0.5], [3.0, -2.0]], dtype=torch.float64)])
    result = log_likelihood(view, x, **TIGHT)
    per_dim = (result.logp - gmm_logp(x, SIGMA_MIN)).abs().max().item() / 2
    assert per_dim < 0.01  # measured 1e-6 nats/dim


# -- a flow-matching ODE: time 0 → 1, the grid does not end at σ = 0 ------------------------


def test_flow_matching_ode_on_increasing_time():
    # Linear path x_t = (1 − t) x_0 + t y, x_0 ~ N(0, I), y ~ N(μ, s² I): the marginal is
    # N(t μ, v_t I) with v_t = (1 − t)² + t² s², and the velocity that preserves it is
    # μ + (t s² − (1 − t)) / v_t · (x − t μ). At t = 1 the density is N(μ, s² I) exactly.
    mu, s = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.4

    def field(x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype)
        v = (1 - t) ** 2 + t**2 * s**2
        return mu + (t * s**2 - (1 - t)) / v * (x - t * mu)

    view = ODEView(
        field=field,
        grid=lambda steps: torch.linspace(0, 1, steps + 1, dtype=torch.float64),
        prior=gaussian_prior(1.0),
        prior_logp=gaussian_logp(1.0),
    )
    x = mu + s * torch.randn(32, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    result = log_likelihood(view, x, **TIGHT)
    exact = mvn_logp(x, mu, s**2 * torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(result.logp, exact, atol=1e-5, rtol=0)


def test_fixed_step_method_steps_on_the_grid():
    # rk4 (3/8 rule in torchdiffeq): 4 evaluations per interval of the grid, σ = 0 dropped.
    x = draw(8, MU3, ISO3, seed=8)
    result = log_likelihood(gaussian_view(MU3, ISO3), x, steps_grid=64, method="rk4")
    assert result.nfe == 4 * 63
    exact = mvn_logp(x, MU3, ISO3 + SMOOTH)
    assert (result.logp - exact).abs().max().item() / 3 < 0.01  # measured 3e-6


# -- units and errors -----------------------------------------------------------------------


def test_bits_per_dim():
    # A uniform density on [−1, 1]^N has log p = −N ln 2: 1 bit/dim; on 8-bit data the
    # discrete probability of one bin (width 2/256) adds log2(128) = 7 bits per dimension.
    n = 12
    logp = torch.full((3,), -n * math.log(2))
    torch.testing.assert_close(bits_per_dim(logp, n), torch.ones(3))
    result = LikelihoodResult(logp=logp, nfe=0, n_dims=n)
    torch.testing.assert_close(result.bpd(offset=7.0), torch.full((3,), 8.0))


def test_bad_arguments_are_config_errors():
    view = gaussian_view(MU3, ISO3)
    x = draw(2, MU3, ISO3, seed=9)
    no_prior = ODEView(field=view.field, grid=view.grid, prior=view.prior)
    with pytest.raises(ConfigError, match="prior_logp"):
        log_likelihood(no_prior, x)
    with pytest.raises(ConfigError, match="divergence"):
        log_likelihood(view, x, divergence="skilling")
    with pytest.raises(ConfigError, match="hutchinson_samples"):
        log_likelihood(view, x, divergence=DIVERGENCES[1], hutchinson_samples=0)


# -- Hutch++ ---------------------------------------------------------------------------------


def test_hutchpp_is_unbiased_with_an_honest_standard_error_and_counts_its_vjps():
    # A rotated Gaussian in 6-D with a spread spectrum: the Jacobian is neither diagonal nor a
    # multiple of I, so the probes have variance.
    n = 6
    g = torch.Generator().manual_seed(11)
    u = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    cov = u @ torch.diag(torch.logspace(-2, 0, n, dtype=torch.float64)) @ u.T
    mu = torch.zeros(n, dtype=torch.float64)
    x = draw(64, mu, cov, seed=12)
    exact = mvn_logp(x, mu, cov + SIGMA_MIN**2 * torch.eye(n, dtype=torch.float64))
    result = log_likelihood(
        gaussian_view(mu, cov),
        x,
        divergence="hutch++",
        hutchinson_samples=16,
        sketch_size=1,
        generator=torch.Generator().manual_seed(13),
        rtol=1e-6,
        atol=1e-6,
    )
    error = result.logp - exact
    assert result.stderr is not None
    # unbiased: the batch-mean error within 3 standard errors (measured 0.58)
    assert abs(error.mean() / (result.stderr.pow(2).sum().sqrt() / len(x))) < 3
    # honest: error spread over reported SE (measured 0.88), |error| ≤ 2 SE on 97% of points
    ratio = error.pow(2).mean().sqrt() / result.stderr.pow(2).mean().sqrt()
    assert 0.6 < ratio < 1.5
    assert (error.abs() <= 2 * result.stderr).double().mean() > 0.85
    assert result.vjps == result.nfe * (2 * 1 + 16)  # sketch twice, then each probe once
