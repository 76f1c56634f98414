"""PFGM++ (plugins/physgen_poisson): the kernel's law, its limits, the oracle flow, the prior's
density, and what the sampling driver accepts. References are independent routes: scipy's
distributions, the EDM process, the finite-set oracle of physgen.testing.oracles, quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from physgen_diffusion.edm import EDM
from physgen_poisson.pfgmpp import (
    PFGMPP,
    PFGMPPOptions,
    pfgmpp_noise,
    pfgmpp_prior_logp,
    sample_gamma,
)
from torch import nn

from physgen.core.precond import edm_coefficients
from physgen.core.process import gaussian_logp, parse_options
from physgen.core.rng import StackedGenerator
from physgen.errors import ConfigError
from physgen.sampling import sample

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def radius_ratio(n: int, N: int, D: float, seed: int) -> np.ndarray:
    """``R²/r²`` of ``n`` kernel draws in ``R^N``, ``r = σ √D`` (σ = 1)."""
    e = pfgmpp_noise((n, N), D, generator=gen(seed), dtype=F64)
    return (e.pow(2).sum(1) / D).numpy()


def random_mlp(dim: int, seed: int = 0) -> nn.Module:
    """physgen's MLP backbone with every weight redrawn (its output layer starts at zero)."""
    from physgen.nets import MLP

    net = MLP(dim, width=32, depth=2).double()
    g = gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=F64))
    return net


class OracleNet(nn.Module):
    """A raw backbone whose EDM-preconditioned denoiser is exactly ``denoise``: inverts
    ``D = c_skip x + c_out F(c_in x, ln σ / 4)`` so the whole driver path runs on an oracle."""

    def __init__(self, denoise, sigma_data: float):
        super().__init__()
        self.denoise, self.sigma_data = denoise, sigma_data
        self.anchor = nn.Parameter(torch.zeros(0, dtype=F64))  # tells the driver the device

    def forward(self, x_in, c_noise, class_labels=None):
        sigma = (4 * c_noise).exp()
        c = edm_coefficients(sigma, self.sigma_data)
        x = x_in / c.c_in[:, None]
        return (self.denoise(x, sigma) - c.c_skip[:, None] * x) / c.c_out[:, None]


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: on a busy 2-core machine, intra-op threads only contend
    (measured 40× slower oracle sampling with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the kernel ---------------------------------------------------------------------------


@pytest.mark.parametrize("a", [0.5, 1.0, 2.5, 64.0, 5e6])
def test_gamma_sampler_matches_scipy(a):
    x = sample_gamma(a, 4000, generator=gen(1)).numpy()
    assert scipy.stats.kstest(x, scipy.stats.gamma(a).cdf).pvalue > 1e-3


@pytest.mark.parametrize("N", [1, 2, 8, 64])
@pytest.mark.parametrize("D", [1.0, 3.0, 16.0, 128.0])
def test_radius_follows_beta_prime(N, D):
    """PFGM++ Appendix B: R²/r² = B/(1 − B), B ~ Beta(N/2, D/2), i.e. BetaPrime(N/2, D/2)."""
    ratio = radius_ratio(4000, N, D, seed=N * 1000 + int(D))
    law = scipy.stats.betaprime(N / 2, D / 2)
    assert scipy.stats.kstest(ratio, law.cdf).pvalue > 1e-3


def test_direction_is_uniform():
    """The direction is uniform: in R^3, each coordinate of u is uniform on [−1, 1]."""
    e = pfgmpp_noise((6000, 3), 4.0, generator=gen(2), dtype=F64)
    u = (e / e.norm(dim=1, keepdim=True)).numpy()
    for k in range(3):
        assert scipy.stats.kstest(u[:, k], scipy.stats.uniform(-1, 2).cdf).pvalue > 1e-3


def test_radius_mean_is_N_over_D_minus_2():
    """docs/math.md §2: E[R²/r²] = N/(D − 2) for D > 2 (standard error from the BetaPrime law)."""
    N, D, n = 8, 64.0, 200_000
    ratio = radius_ratio(n, N, D, seed=3)
    mean, se = N / (D - 2), math.sqrt(scipy.stats.betaprime(N / 2, D / 2).var() / n)
    assert abs(ratio.mean() - mean) < 4 * se


def test_kernel_moments_approach_gaussian():
    """A coordinate of the unit-σ kernel noise is Student-t with D degrees of freedom:
    E e² = D/(D−2), E e⁴ = 3D²/((D−2)(D−4)) → 1 and 3, the Gaussian's."""
    gaps = []
    for D in [16.0, 128.0, 1e4, 1e7]:
        e = pfgmpp_noise((20_000, 4), D, generator=gen(int(math.log10(D))), dtype=F64)
        m2, m4 = e.pow(2).mean().item(), e.pow(4).mean().item()
        assert m2 == pytest.approx(D / (D - 2), rel=0.02)
        assert m4 == pytest.approx(3 * D**2 / ((D - 2) * (D - 4)), rel=0.08)
        gaps.append(abs(D / (D - 2) - 1))
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-6


def test_large_D_is_finite_and_nearly_gaussian():
    """D = 1e7: finite draws; the radial factor √(D/χ²_D) has std 1/√(2D) (delta method)."""
    D = 1e7
    g = sample_gamma(D / 2, 20_000, generator=gen(4))
    factor = (D / 2 / g).sqrt()
    assert torch.isfinite(factor).all()
    assert factor.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert factor.std().item() == pytest.approx(1 / math.sqrt(2 * D), rel=0.03)


def test_prior_does_not_depend_on_batch():
    p = PFGMPP(D=3.0)
    prior = p.denoiser(nn.Identity()).prior
    a = prior((6, 2), generator=StackedGenerator.for_samples(7, 0, 6), dtype=F64)
    b = prior((2, 2), generator=StackedGenerator.for_samples(7, 2, 2), dtype=F64)
    assert torch.equal(a[2:4], b)


# -- the prior's density ------------------------------------------------------------------


@pytest.mark.parametrize("D", [1.0, 3.0, 50.0])
def test_prior_logp_normalised_1d_2d(D):
    sigma = 1.5
    logp = pfgmpp_prior_logp(sigma, D)

    def p1(x):
        return math.exp(logp(torch.tensor([[x]], dtype=F64)).item())

    def p2_radial(r):  # ∫_{R²} p = ∫_0^∞ 2π r p(r) dr
        return 2 * math.pi * r * math.exp(logp(torch.tensor([[r, 0.0]], dtype=F64)).item())

    one = scipy.integrate.quad(p1, -np.inf, np.inf, limit=400)[0]
    two = scipy.integrate.quad(p2_radial, 0, np.inf, limit=400)[0]
    assert one == pytest.approx(1.0, abs=1e-6)
    assert two == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("N,D", [(1, 1.0), (3, 4.0), (16, 128.0)])
def test_prior_logp_is_multivariate_t(N, D):
    """The kernel at r_max centred at 0 is scipy's multivariate t (df = D, shape σ² I)."""
    sigma = 80.0
    x = sigma * pfgmpp_noise((64, N), D, generator=gen(5), dtype=F64)
    ref = scipy.stats.multivariate_t(np.zeros(N), sigma**2 * np.eye(N), df=D).logpdf(x.numpy())
    np.testing.assert_allclose(pfgmpp_prior_logp(sigma, D)(x).numpy(), ref, rtol=1e-10)


def test_prior_logp_tends_to_gaussian():
    x = 80.0 * torch.randn(32, 16, generator=gen(6), dtype=F64)
    gauss = gaussian_logp(80.0)(x)
    gaps = [(pfgmpp_prior_logp(80.0, D)(x) - gauss).abs().max().item() for D in (1e3, 1e5, 1e7)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-4
    assert torch.allclose(pfgmpp_prior_logp(80.0, math.inf)(x), gauss, rtol=0, atol=1e-10)


def test_likelihood_of_a_point_mass_is_the_kernel():
    """Data = one point at 0: p_σ is the kernel itself, the PF-ODE is x ∝ σ, and the
    log-likelihood at σ_min through prior_logp must be the t-density of scale σ_min."""
    likelihood = pytest.importorskip("physgen.sampling.likelihood")
    from physgen_poisson.oracle import pfgmpp_denoiser

    N, D = 3, 5.0
    p = PFGMPP(D=D, sigma_data=1.0, sigma_min=0.05, sigma_max=10.0)
    net = OracleNet(pfgmpp_denoiser(torch.zeros(1, N, dtype=F64), D), 1.0)
    x = 0.05 * pfgmpp_noise((8, N), D, generator=gen(7), dtype=F64)
    grid = torch.logspace(1, math.log10(0.05), 16, dtype=F64)  # x ∝ σ: geometric steps
    got = likelihood.log_likelihood(p.ode(net), x, steps_grid=grid, method="rk4").logp
    ref = scipy.stats.multivariate_t(np.zeros(N), 0.05**2 * np.eye(N), df=D).logpdf(x.numpy())
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=3e-3)  # measured 9.2e-4


# -- limits and equality with EDM ---------------------------------------------------------


def test_D_inf_is_edm_exactly():
    """PFGM++ Prop. 4.1 at D = ∞: same loss from the same generator state, prior, views."""
    opts = dict(sigma_data=0.7, P_mean=-1.0, sigma_max=40.0)
    pf, edm = PFGMPP(D=math.inf, **opts), EDM(**opts)
    net = random_mlp(3).float()
    y = torch.randn(32, 3, generator=gen(8))
    assert torch.equal(pf.loss(net, y, generator=gen(9)), edm.loss(net, y, generator=gen(9)))
    vp, ve = pf.denoiser(net), edm.denoiser(net)
    assert torch.equal(vp.sigmas(18), ve.sigmas(18))
    x0 = vp.prior((32, 3), generator=gen(10))
    assert torch.equal(x0, ve.prior((32, 3), generator=gen(10)))
    assert torch.allclose(vp.prior_logp(x0), ve.prior_logp(x0), rtol=1e-6, atol=0)
    sigma = torch.tensor(2.0)
    assert torch.equal(vp.denoise(x0, sigma), ve.denoise(x0, sigma))
    assert torch.equal(pf.ode(net).field(x0, sigma), edm.ode(net).field(x0, sigma))


def test_large_D_trajectory_matches_edm():
    """Same network, seed and heun grid through the sampling driver: PFGM++ at D draws the same
    Gaussian n as EDM and rescales it by √(D/χ²_D) = 1 + O(D^(−1/2)); the samples agree to
    that order."""
    net = random_mlp(2)
    kw = dict(n=256, steps=18, sampler="heun", seed=3, dtype=F64)
    ref = sample(EDM(), net, (2,), **kw).x
    gap = {D: (sample(PFGMPP(D=D), net, (2,), **kw).x - ref).abs().max().item() for D in (1e4, 1e6)}
    assert gap[1e6] < 5e-3  # measured 2.4e-3 (the samples have std 0.53)
    assert 5 < gap[1e4] / gap[1e6] < 20  # √100 = 10


@pytest.mark.parametrize("D", [1.0, 4.0, 128.0, math.inf])
def test_oracle_flow_lands_on_data(D):
    """docs/math.md §6: with the finite-set PFGM++ posterior mean, heun carries prior draws onto
    data points. D = 1 (PFGM) has a Cauchy-like prior tail: a draw at R ≫ r_max keeps R/r
    nearly fixed along the flow and is not resolved by σ_min (one of 200 draws, at R = 1.3e5,
    ends ~1 from the data), so there we ask for 95% of the draws."""
    from physgen_poisson.oracle import pfgmpp_denoiser

    data = torch.randn(10, 4, generator=gen(11), dtype=F64)
    p = PFGMPP(D=D, sigma_data=1.0)
    net = OracleNet(pfgmpp_denoiser(data, D), 1.0)
    x = sample(p, net, (4,), n=200, steps=18, sampler="heun", dtype=F64).x
    nearest = torch.cdist(x, data).min(1).values
    if D == 1:
        assert torch.quantile(nearest, 0.95).item() < 1e-5  # measured 2.4e-6
    else:
        assert nearest.max().item() < 1e-6  # measured 2.1e-8


def test_dpmpp_2m_runs_on_the_denoiser_view():
    from physgen_poisson.oracle import pfgmpp_denoiser

    data = torch.randn(10, 2, generator=gen(12), dtype=F64)
    net = OracleNet(pfgmpp_denoiser(data, 16.0), 1.0)
    x = sample(
        PFGMPP(D=16.0, sigma_data=1.0), net, (2,), n=64, steps=32, sampler="dpmpp_2m", dtype=F64
    ).x
    assert torch.cdist(x, data).min(1).values.max().item() < 1e-3


# -- what users can and cannot ask for ----------------------------------------------------


@pytest.mark.parametrize("sampler", ["em", "heun_churn", "langevin", "pc"])
def test_gaussian_noise_samplers_refused(sampler):
    with pytest.raises(ConfigError) as err:
        sample(PFGMPP(), random_mlp(2), (2,), n=2, steps=2, sampler=sampler, dtype=F64)
    msg = str(err.value)
    assert "\n" not in msg and "'score'" in msg and "heun" in msg and "dpmpp_2m" in msg
    assert "langevin" not in msg.split("fit:")[1]


@pytest.mark.parametrize("D", [0, -1.0, math.nan, "0", "-inf"])
def test_bad_D_is_one_line_error(D):
    with pytest.raises(ConfigError, match=r"^pfgmpp: D must be > 0") as err:
        PFGMPP(D=D)
    assert "\n" not in str(err.value)


def test_D_inf_from_the_command_line():
    opts = parse_options(PFGMPPOptions, {"D": "inf", "sigma_max": "40"}, owner="pfgmpp")
    assert math.inf == opts.D and opts.sigma_max == 40.0
    from physgen.api import get_process

    p = get_process("pfgmpp", D="inf")
    assert isinstance(p, PFGMPP) and math.inf == p.options.D
    assert p.views() == ("ode", "denoiser")


# -- end to end ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_train_and_sample(tmp_path):
    """`physgen train --process pfgmpp -o D=128` then `physgen sample`: the samples are far
    closer to fresh data than the prior and than a moment-matched Gaussian are; a
    Gaussian-noise sampler is a one-line error. (swissroll: unlabelled, so the CLI trains an
    unconditional network.)"""
    import os
    import subprocess
    import sys

    from physgen.io import read_run

    run, samples = tmp_path / "run", tmp_path / "s.h5"
    cli = [sys.executable, "-m", "physgen.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny MLP: threads only contend (20× here)
    train = "train --process pfgmpp -o D=128 -o sigma_data=1.0 --dataset swissroll "
    train += f"--n-data 4000 --steps 200 --lr 3e-3 --ema-decay 0.99 --out {run} -q"
    out = subprocess.run([*cli, *train.split()], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    ckpt = run / "checkpoint.safetensors"
    draw = f"sample {ckpt} --steps 18 -n 1000 --out {samples} -q"
    out = subprocess.run([*cli, *draw.split()], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    m = read_run(samples).metrics
    # measured 0.11 (prior 82; N(0, I) scores 0.25, fresh data 0.053)
    assert m["sliced_w2"] < 0.18 and m["sliced_w2_prior"] > 50
    refused = f"sample {ckpt} --sampler langevin --out {tmp_path / 'x.h5'}".split()
    out = subprocess.run([*cli, *refused], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1
    assert "samplers that fit" in out.stderr


@pytest.mark.slow
def test_library_train_and_sample():
    """physgen.train for 300 steps on moons, then heun: sliced W2 to fresh data far below the
    prior's and a moment-matched Gaussian's."""
    import physgen
    from physgen.metrics import sliced_w2
    from physgen.nets import MLP

    data = physgen.load_dataset("moons", 4000, seed=0)
    process = PFGMPP(D=128.0, sigma_data=float(data.x.std()))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = MLP(2)
    run = physgen.train(
        process,
        net,
        data,
        steps=300,
        batch_size=256,
        lr=3e-3,
        ema_decay=0.99,
        seed=0,
        progress=False,
    )
    x = sample(process, run.ema, (2,), n=1000, steps=18, seed=1).x
    fresh = physgen.load_dataset("moons", 1000, seed=1).x
    prior = process.denoiser(run.ema).prior((1000, 2), generator=gen(13))
    w2, w2_prior = sliced_w2(x, fresh), sliced_w2(prior, fresh)
    assert w2 < 0.15 and w2_prior > 50  # measured 0.10 (prior 82; N(0, I) 0.32, data 0.052)
