"""physgen-yukawa: the kernel's law, the velocity factor, the prior's density, the exact
oracle flow, and the m → 0 (PFGM) and m → ∞ (EDM) limits. Independent routes: scipy's
inverse-Gaussian and normal-inverse-Gaussian laws, scipy's Bessel K, finite differences of
scipy's quantile function, physgen's PFGM++ and EDM processes and oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from torch import nn

pytest.importorskip("physgen_yukawa")

from physgen_diffusion.edm import EDM
from physgen_poisson.oracle import pfgmpp_denoiser
from physgen_poisson.pfgmpp import PFGMPP, pfgmpp_noise, pfgmpp_prior_logp
from physgen_yukawa.oracle import yukawa_denoiser
from physgen_yukawa.yukawa import (
    Yukawa,
    sample_v,
    sigma_to_t,
    target_ratio,
    yukawa_noise,
    yukawa_prior_logp,
)

from physgen.core.precond import edm_coefficients
from physgen.core.process import DenoiserView, gaussian_logp
from physgen.core.rng import StackedGenerator
from physgen.errors import ConfigError
from physgen.sampling import sample
from physgen.solvers.ode import rk4
from physgen.testing.oracles import empirical_denoiser

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def a_of(kappa: float) -> float:
    return (kappa + math.sqrt(kappa**2 + 4)) / 2


def kernel(n: int, sigma: float, m: float, dim: int, seed: int) -> torch.Tensor:
    sigmas = torch.full((n,), sigma, dtype=F64)
    return sigma * yukawa_noise(sigmas, (n, dim), m, generator=gen(seed), dtype=F64)[0]


class OracleNet(nn.Module):
    """A raw backbone whose EDM-preconditioned denoiser is exactly ``denoise``."""

    def __init__(self, denoise, sigma_data: float):
        super().__init__()
        self.denoise, self.sigma_data = denoise, sigma_data
        self.anchor = nn.Parameter(torch.zeros(0, dtype=F64))  # tells the driver the device

    def forward(self, x_in, c_noise, class_labels=None):
        sigma = (4 * c_noise).exp()
        c = edm_coefficients(sigma, self.sigma_data)
        x = x_in / c.c_in[:, None]
        return (self.denoise(x, sigma) - c.c_skip[:, None] * x) / c.c_out[:, None]


# -- the kernel (Y4)–(Y5) -------------------------------------------------------------------


@pytest.mark.parametrize("kappa", [0.0, 0.1, 1.0, 30.0, 1e4])
def test_v_is_inverse_gaussian(kappa):
    """V ~ IG(a/κ, a²); κ = 0 is the Lévy law 1/χ²_1 (scipy's levy)."""
    v = sample_v(torch.full((4000,), kappa), generator=gen(1)).numpy()
    a = a_of(kappa)
    law = scipy.stats.levy() if kappa == 0 else scipy.stats.invgauss(mu=1 / (kappa * a), scale=a**2)
    assert scipy.stats.kstest(v, law.cdf).pvalue > 1e-3


@pytest.mark.parametrize("m,sigma", [(0.5, 0.2), (2.0, 3.0)])
def test_coordinate_is_scipy_norminvgauss(m, sigma):
    """(Y4): each coordinate of the kernel in R^3 is NIG(α = m, β = 0, δ = t), which scipy
    writes norminvgauss(a = m t, b = 0, scale = t)."""
    t = float(sigma_to_t(torch.tensor(sigma, dtype=F64), m))
    x = kernel(800, sigma, m, 3, seed=2).numpy()
    law = scipy.stats.norminvgauss(a=m * t, b=0.0, scale=t)  # its cdf is slow: one coordinate
    assert scipy.stats.kstest(x[:, 1], law.cdf).pvalue > 1e-3


def test_radius_moments():
    """|x − y|² = σ² V χ²_N: mean N σ² a/κ, second moment N(N+2) σ⁴ (a/κ³ + a²/κ²)."""
    m, sigma, N, n = 2.0, 1.5, 4, 200_000
    kappa, a = m * sigma, a_of(m * sigma)
    r2 = kernel(n, sigma, m, N, seed=3).pow(2).sum(1) / sigma**2
    m1, m2 = N * a / kappa, N * (N + 2) * (a / kappa**3 + a**2 / kappa**2)
    se1, se2 = math.sqrt((m2 - m1**2) / n), r2.pow(2).std().item() / math.sqrt(n)
    assert abs(r2.mean().item() - m1) < 4 * se1
    assert abs(r2.pow(2).mean().item() - m2) < 4 * se2


def test_m0_kernel_is_pfgm():
    """m = 0: the kernel is PFGM++'s with D = 1 (the multivariate Cauchy of scale σ)."""
    ours = kernel(4000, 1.0, 0.0, 3, seed=4).norm(dim=1).numpy()
    pfgm = pfgmpp_noise((4000, 3), 1.0, generator=gen(5), dtype=F64).norm(dim=1).numpy()
    assert scipy.stats.ks_2samp(ours, pfgm).pvalue > 1e-3


def test_prior_does_not_depend_on_batch():
    prior = Yukawa(m=0.5).denoiser(nn.Identity()).prior
    a = prior((6, 2), generator=StackedGenerator.for_samples(7, 0, 6), dtype=F64)
    b = prior((2, 2), generator=StackedGenerator.for_samples(7, 2, 2), dtype=F64)
    assert torch.equal(a[2:4], b)


# -- the velocity factor (Y6)–(Y7) ---------------------------------------------------------


@pytest.mark.parametrize("m,sigma", [(0.7, 0.1), (0.7, 1.0), (3.0, 2.0)])
def test_velocity_factor_is_the_quantile_derivative(m, sigma):
    """(Y6): at a fixed quantile u, dW/dt = (2W/t) g — checked against a central difference
    in t of scipy's IG(t/m, t²) quantile function."""
    u = np.array([0.02, 0.3, 0.5, 0.7, 0.95])
    t = float(sigma_to_t(torch.tensor(sigma, dtype=F64), m))

    def quantile(t: float) -> np.ndarray:
        return scipy.stats.invgauss(mu=1 / (m * t), scale=t * t).ppf(u)

    h = 1e-5 * t
    slope = (quantile(t + h) - quantile(t - h)) / (2 * h)
    w = quantile(t)
    kappa, a = m * sigma, a_of(m * sigma)
    ratio = target_ratio(torch.tensor(w / sigma**2), torch.tensor(kappa)).numpy()
    g = ratio * (1 + a**2) / (2 * a**2)
    np.testing.assert_allclose(2 * w / t * g, slope, rtol=1e-6)


def test_target_ratio_limits():
    """g/ḡ is exactly 1 at m = 0 (so ŷ = y: PFGM's target) and → 1 as κ → ∞ (EDM's)."""
    v = sample_v(torch.full((1000,), 0.0), generator=gen(6))
    assert torch.equal(target_ratio(v, torch.zeros(())), torch.ones_like(v))
    gaps = []
    for kappa in (10.0, 1e3, 1e5):
        v = sample_v(torch.full((1000,), kappa), generator=gen(7))
        gaps.append((target_ratio(v, torch.tensor(kappa)) - 1).abs().max().item())
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-2


@pytest.mark.parametrize("kappa", [0.5, 2.0, 10.0])
def test_mean_velocity_identity(kappa):
    """E[dW/dt] = dE[W]/dt = 1/m, i.e. E[V g] = a/(2κ) in the σ-frame."""
    v = sample_v(torch.full((200_000,), kappa), generator=gen(8))
    a = a_of(kappa)
    vg = v * target_ratio(v, torch.tensor(kappa)) * (1 + a**2) / (2 * a**2)
    se = vg.std().item() / math.sqrt(v.numel())
    assert abs(vg.mean().item() - a / (2 * kappa)) < 4 * se


# -- the prior's density -------------------------------------------------------------------


@pytest.mark.parametrize("N", [1, 2, 5, 40])
@pytest.mark.parametrize("m,sigma", [(0.5, 2.0), (3.0, 1.0), (1.0, 80.0), (1.0, 0.01)])
def test_prior_logp_is_the_bessel_closed_form(N, m, sigma):
    """(Y4): 2t e^{mt} (2π)^{−(N+1)/2} (m/s)^{(N+1)/2} K_{(N+1)/2}(m s), by scipy's kve."""
    t = float(sigma_to_t(torch.tensor(sigma, dtype=F64), m))
    x = kernel(16, sigma, m, N, seed=N) * torch.logspace(-2, 1, 16, dtype=F64)[:, None]
    s, nu = np.sqrt(x.pow(2).sum(1).numpy() + t * t), (N + 1) / 2
    ref = (
        np.log(2 * t)
        + m * t
        - nu * np.log(2 * np.pi)
        + nu * np.log(m / s)
        + np.log(scipy.special.kve(nu, m * s))
        - m * s
    )
    np.testing.assert_allclose(yukawa_prior_logp(sigma, m)(x).numpy(), ref, rtol=1e-11)


def test_prior_logp_limits():
    """m = 0 is PFGM++'s D = 1 prior (Cauchy) exactly; m = inf is N(0, σ² I); large m → it."""
    x = kernel(32, 3.0, 0.0, 6, seed=9)
    np.testing.assert_allclose(
        yukawa_prior_logp(3.0, 0.0)(x).numpy(), pfgmpp_prior_logp(3.0, 1.0)(x).numpy(), rtol=1e-12
    )
    x = 3.0 * torch.randn(32, 6, generator=gen(10), dtype=F64)
    gauss = gaussian_logp(3.0)(x)
    assert torch.equal(yukawa_prior_logp(3.0, math.inf)(x), gauss)
    gaps = [(yukawa_prior_logp(3.0, m)(x) - gauss).abs().max().item() for m in (10.0, 1e3, 1e5)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3


# -- the exact oracle flow -----------------------------------------------------------------


def test_oracle_limits():
    """m = 0: the oracle is PFGM++'s with D = 1; large m: the Gaussian one (for x in the
    typical set of the kernel); GenPhys's field-line velocity agrees at m = 0 only."""
    data = torch.randn(4, 2, generator=gen(11), dtype=F64)
    x = data[torch.arange(40) % 4] + 0.5 * torch.randn(40, 2, generator=gen(12), dtype=F64)
    for sigma in (0.05, 0.5, 3.0):
        ours, pfgm = yukawa_denoiser(data, 0.0)(x, sigma), pfgmpp_denoiser(data, 1.0)(x, sigma)
        torch.testing.assert_close(ours, pfgm, rtol=0, atol=1e-12)
        lines = yukawa_denoiser(data, 0.0, field_lines=True)(x, sigma)
        torch.testing.assert_close(lines, pfgm, rtol=0, atol=1e-12)
    gauss = empirical_denoiser(data)(x, 0.5)
    gaps = [(yukawa_denoiser(data, m)(x, 0.5) - gauss).abs().max().item() for m in (1e2, 1e4)]
    assert gaps[1] < gaps[0] / 10 and gaps[1] < 1e-3


def test_oracle_flow_carries_the_marginals():
    """(Y6)–(Y7): from draws of p_σ0 = data ∗ kernel(σ0), RK4 on the exact oracle's ODE lands
    on the law p_σ1 (two-sample KS against fresh kernel draws at σ1). GenPhys's field-line
    velocity alone — the density flow (Y2) without its death term — does not (measured
    p ≈ 1e-39 with 1000 draws)."""
    data = torch.tensor([[-1.0], [0.3], [0.5]], dtype=F64)
    m, s0, s1, n = 1.0, 5.0, 0.3, 500

    def draws(sigma: float, seed: int) -> torch.Tensor:
        j = torch.randint(3, (n,), generator=gen(seed))
        return data[j] + kernel(n, sigma, m, 1, seed + 1)

    grid = torch.logspace(math.log10(s0), math.log10(s1), 13, dtype=F64)
    fresh = draws(s1, 20)[:, 0].numpy()
    pvalues = {}
    for lines in (False, True):
        view = DenoiserView(yukawa_denoiser(data, m, field_lines=lines), None, None).as_ode()  # type: ignore[arg-type]
        x = rk4(view.field, draws(s0, 10), grid)
        pvalues[lines] = scipy.stats.ks_2samp(x[:, 0].numpy(), fresh).pvalue
    assert pvalues[False] > 1e-3 and pvalues[True] < 1e-8


def test_oracle_flow_lands_on_data_uniformly():
    """Through the sampling driver (heun, 18 steps), the exact oracle carries prior draws onto
    the data points, each point receiving its share 1/M (chi-square test). Below σ ~ 1/m the
    kernel is Cauchy-like (PFGM, D = 1): a few heavy-tail draws are not resolved by σ_min, as
    for PFGM++ at D = 1 on the same data (measured 95% quantiles 2.7e-4 and 1.7e-4)."""
    data = torch.tensor([[0.0, 0.0], [0.3, 0.0], [2.0, 1.0], [-1.5, 2.0]], dtype=F64)
    net = OracleNet(yukawa_denoiser(data, 1.0), 1.0)
    x = sample(Yukawa(m=1.0, sigma_data=1.0), net, (2,), n=400, steps=18, dtype=F64).x
    dist, idx = torch.cdist(x, data).min(1)
    assert dist.median().item() < 1e-5  # measured 3.0e-6
    assert torch.quantile(dist, 0.9).item() < 1e-3  # measured 8.1e-5
    counts = torch.bincount(idx, minlength=4).numpy()
    assert scipy.stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("m", [1.0, 5.0])
def test_likelihood_of_a_point_mass_is_the_kernel(m):
    """Data = one point at 0: p_σ is the kernel. The exact log-likelihood at σ_min through the
    ODE (Y7) and the prior's density (physgen.sampling.likelihood, RK4 on 32 geometric steps)
    must be
    the kernel's own log-density at σ_min: the flow transports densities exactly (measured
    gap 3e-5 at 32 steps, 5e-4 at 16: fourth order)."""
    from physgen.sampling.likelihood import log_likelihood

    N = 2
    p = Yukawa(m=m, sigma_data=1.0, sigma_min=0.05, sigma_max=10.0)
    net = OracleNet(yukawa_denoiser(torch.zeros(1, N, dtype=F64), m), 1.0)
    x = kernel(8, 0.05, m, N, seed=21)
    grid = torch.logspace(1, math.log10(0.05), 32, dtype=F64)
    got = log_likelihood(p.ode(net), x, steps_grid=grid, method="rk4").logp
    torch.testing.assert_close(got, yukawa_prior_logp(0.05, m)(x), rtol=0, atol=2e-4)


def test_dpmpp_2m_runs_on_the_denoiser_view():
    """DPM-Solver++(2M) needs only the ODE form (Y7): from the same prior draws it lands on
    data points, the same ones heun reaches."""
    data = torch.randn(6, 2, generator=gen(13), dtype=F64)
    net = OracleNet(yukawa_denoiser(data, 2.0), 1.0)
    p = Yukawa(m=2.0, sigma_data=1.0)
    x = sample(p, net, (2,), n=64, steps=32, sampler="dpmpp_2m", dtype=F64).x
    ref = sample(p, net, (2,), n=64, steps=32, sampler="heun", dtype=F64).x
    dist, idx = torch.cdist(x, data).min(1)
    assert dist.median().item() < 1e-4  # measured 5.4e-6
    assert (idx == torch.cdist(ref, data).argmin(1)).float().mean().item() > 0.95


# -- the process -----------------------------------------------------------------------------


def test_m_inf_is_edm_exactly():
    """m = inf: the same loss from the same generator state, prior and denoiser as EDM."""
    opts = dict(sigma_data=0.7, P_mean=-1.0, sigma_max=40.0)
    yk, edm = Yukawa(m=math.inf, **opts), EDM(**opts)
    net = nn.Sequential(nn.Linear(3, 3))
    y = torch.randn(32, 3, generator=gen(14))

    def backbone(x, noise_label, class_labels=None):
        return net(x) * noise_label[:, None]

    assert torch.equal(
        yk.loss(backbone, y, generator=gen(15)), edm.loss(backbone, y, generator=gen(15))
    )
    vy, ve = yk.denoiser(backbone), edm.denoiser(backbone)
    x0 = vy.prior((32, 3), generator=gen(16))
    assert torch.equal(x0, ve.prior((32, 3), generator=gen(16)))
    assert torch.equal(vy.sigmas(18), ve.sigmas(18))


def test_m0_loss_targets_the_data():
    """m = 0 (PFGM): ŷ = y, so a backbone whose denoiser returns y exactly has zero loss."""
    y = torch.randn(64, 2, generator=gen(17), dtype=F64)
    p = Yukawa(m=0.0, sigma_data=1.0)
    # D = c_skip x + c_out F = y  ⇔  F = (y − c_skip x) / c_out; the backbone sees c_in x.
    net = OracleNet(lambda x, sigma: y, 1.0)
    assert p.loss(net, y, generator=gen(18)).abs().max().item() < 1e-12


def test_views_and_refusals():
    p = Yukawa()
    assert p.views() == ("ode", "denoiser")
    with pytest.raises(ConfigError, match="'score'"):
        sample(p, nn.Linear(2, 2), (2,), n=2, steps=2, sampler="langevin")


@pytest.mark.parametrize("m", [-1.0, math.nan, "-0.5", "abc"])
def test_bad_mass_is_one_line_error(m):
    with pytest.raises(ConfigError) as err:
        Yukawa(m=m)
    assert "\n" not in str(err.value) and "yukawa" in str(err.value).lower()


def test_m0_process_matches_pfgm_views():
    """m = 0 and PFGM++ with D = 1 share the grid and the prior's density."""
    yk, pf = Yukawa(m=0.0), PFGMPP(D=1.0)
    vy, vp = yk.denoiser(nn.Identity()), pf.denoiser(nn.Identity())
    assert torch.equal(vy.sigmas(18), vp.sigmas(18))
    x = vp.prior((16, 3), generator=gen(19), dtype=F64)
    torch.testing.assert_close(vy.prior_logp(x), vp.prior_logp(x), rtol=1e-12, atol=0)
