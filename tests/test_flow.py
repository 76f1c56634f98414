"""Flow matching (physgen_flow): couplings, the linear path, the σ-frame views, reflow and
straightness — each against an independent route: a brute-force optimum, finite differences,
the closed-form flow of Gaussian data, the exact finite-data oracles of docs/math.md §6, closed-form
straightness of a rotation.

Gaussian data ``y ~ N(μ, s² I)`` with prior ``N(0, I)`` and the independent coupling has the
exact flow-matching field ``v(x, t) = μ + (t s² − (1 − t)) / r_t² (x − t μ)``,
``r_t² = (1 − t)² + t² s²`` (the regression E[x_1 − x_0 | x_t] of jointly Gaussian variables),
whose flow map is ``x_1 = μ + s x_0``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from physgen_flow.couplings import (
    IndependentCoupling,
    OTCoupling,
    PairCoupling,
    SinkhornCoupling,
    squared_cost,
)
from physgen_flow.matching import (
    FlowMatching,
    OTFlowMatching,
    RectifiedFlow,
    linear_path,
    source_prior,
)
from physgen_flow.oracle import flow_matching_velocity
from torch import Tensor, nn

import physgen
from physgen.core.process import ODEView, ScoreView, append_dims
from physgen.core.rng import StackedGenerator
from physgen.errors import ConfigError, DataError
from physgen.registry import get_registry
from physgen.sampling import sample
from physgen.sampling.reflow import (
    Pairs,
    gaussian_scale,
    generate_pairs,
    load_pairs,
    save_pairs,
    straightness,
    write_pairs,
)
from physgen.testing.oracles import empirical_denoiser

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
S = 0.5


class FieldNet(nn.Module):
    """A backbone whose output is a given velocity ``v(x, t)`` (noise label = t)."""

    def __init__(self, velocity: Callable[[Tensor, Tensor], Tensor]):
        super().__init__()
        self.velocity = velocity
        self.anchor = nn.Parameter(torch.zeros((), dtype=torch.float64))  # device for sample()

    def forward(self, x: Tensor, label: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.velocity(x, label)


def gaussian_velocity(mu: Tensor, s: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact I-CFM field of y ~ N(μ, s² I) (module docstring)."""

    def v(x: Tensor, t: Tensor) -> Tensor:
        t = append_dims(torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0]), x.ndim)
        r2 = (1 - t) ** 2 + t**2 * s**2
        m = mu.to(x)
        return m + (t * s**2 - (1 - t)) / r2 * (x - t * m)

    return v


def random_mlp(seed: int = 0) -> nn.Module:
    """An MLP with a random (not zero) output layer, so that v is a non-trivial function."""
    torch.manual_seed(seed)  # tests only: the backbone's own init uses the global RNG
    net: Any = physgen.get_network("mlp", (2,), width=32, depth=2)
    nn.init.normal_(net.out.weight, std=0.5)
    return net.double()


def prior_draws(seed: int, n: int) -> Tensor:
    """The standard normal draws sample() starts row i from (seed (seed, i), first draw)."""
    return StackedGenerator.for_samples(seed, 0, n).randn((n, 2), dtype=torch.float64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """2-D batches are tiny: torch's intra-op thread pool only adds contention on a busy
    2-core machine (10 ms per op measured). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(*args: Any, **kwargs: Any) -> Any:
    return physgen.train(*args, progress=False, **kwargs)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


def test_plugin_registers_processes_and_couplings() -> None:
    registry = get_registry()
    assert {"cfm", "otcfm", "rectified"} <= set(registry.names("processes"))
    assert {"independent", "ot", "sinkhorn"} <= set(registry.names("couplings"))
    assert physgen.get_process("cfm").options.coupling == "independent"
    assert physgen.get_process("otcfm").options.coupling == "ot"
    assert isinstance(physgen.get_process("cfm", coupling="sinkhorn").coupling, SinkhornCoupling)
    assert FlowMatching().views() == ("ode", "denoiser", "score")
    for cls in (OTFlowMatching, RectifiedFlow):  # no Gaussian perturbation: no score view
        assert cls().views() == ("ode", "denoiser")
    with pytest.raises(ConfigError, match="unknown coupling 'nope'"):
        physgen.get_process("cfm", coupling="nope")
    with pytest.raises(ConfigError, match="time_sampling"):
        physgen.get_process("cfm", time_sampling="beta")
    with pytest.raises(ConfigError, match="unknown source"):
        physgen.get_process("cfm", source="nowhere")


# --------------------------------------------------------------------------------------
# Couplings
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 7])
def test_ot_coupling_is_the_brute_force_optimum(n: int) -> None:
    for seed, dim in itertools.product(range(4), (1, 2, 3)):
        g = torch.Generator().manual_seed(100 * n + 10 * seed + dim)
        x0 = torch.randn(n, dim, generator=g, dtype=torch.float64)
        x1 = torch.randn(n, dim, generator=g, dtype=torch.float64) + 0.5
        cost = squared_cost(x0, x1)
        best = min(sum(cost[p[j], j] for j in range(n)) for p in itertools.permutations(range(n)))
        y0, y1 = OTCoupling()(x0, x1)
        assert torch.equal(y1, x1)
        assert sorted(map(tuple, y0.tolist())) == sorted(map(tuple, x0.tolist()))  # a permutation
        assert float((y0 - y1).pow(2).sum()) == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_sinkhorn_coupling_limits_and_randomness() -> None:
    g = torch.Generator().manual_seed(0)
    perm = torch.tensor([4, 0, 5, 1, 3, 2])
    x0 = torch.randn(6, 2, generator=g)
    x1 = x0[perm] + 0.05 * torch.randn(6, 2, generator=g)
    optimum, _ = OTCoupling()(x0, x1)
    assert torch.equal(optimum, x0[perm])  # the planted pairing
    # Small ε: the plan concentrates on the OT permutation; large ε: the product coupling.
    sharp = SinkhornCoupling(reg=0.02).plan(x0, x1)
    assert sharp[perm.numpy(), np.arange(6)].sum() > 0.9
    flat = SinkhornCoupling(reg=1e4).plan(x0, x1)
    assert np.allclose(flat, 1 / 36, rtol=1e-3)
    # Partners are drawn from the plan's columns (chi-square, 600 draws, 30 dof).
    coupling, state = SinkhornCoupling(reg=0.5), torch.get_rng_state()
    plan, gen, hits = coupling.plan(x0, x1), torch.Generator().manual_seed(2), np.zeros((6, 6))
    for _ in range(100):
        y0, _ = coupling(x0, x1, gen)
        hits += (y0[:, None] == x0[None]).all(2).numpy().T  # [i, j]: x0_i drawn for x1_j
    expected = 600 * plan
    assert ((hits - expected) ** 2 / expected).sum() < 59.7  # p ≈ 0.001
    # The draws depend on the generator only; the global RNG is untouched.
    a, _ = coupling(x0, x1, torch.Generator().manual_seed(3))
    b, _ = coupling(x0, x1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)
    assert IndependentCoupling()(x0, x1)[0] is x0


def test_pair_coupling_returns_stored_noise(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g)
    coupling = PairCoupling(z, x)
    idx = torch.tensor([7, 3, 3, 49, 0])  # any order, repeats: what the trainer draws
    z_out, x_out = coupling(torch.zeros(5, 2), x[idx])
    assert torch.equal(z_out, z[idx]) and torch.equal(x_out, x[idx])
    with pytest.raises(DataError, match="not in the reflow pairs"):
        coupling(torch.zeros(2, 2), x[:2] + 1e-3)


# --------------------------------------------------------------------------------------
# The path and the loss
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_path_endpoints_and_target_is_the_time_derivative(sigma_min: float) -> None:
    g = torch.Generator().manual_seed(0)
    x0, x1 = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(2))
    ones = torch.ones(4, dtype=torch.float64)
    assert torch.allclose(linear_path(x0, x1, 0 * ones, sigma_min).x_t, x0)
    # Lipman et al. eq. 20: mean t x_1, std σ_t = 1 − (1 − σ_min) t; at t = 1 the std is σ_min.
    assert torch.allclose(linear_path(x0, x1, ones, sigma_min).x_t, x1 + sigma_min * x0)
    t, h = torch.rand(4, generator=g, dtype=torch.float64) * 0.8 + 0.1, 1e-6
    u = linear_path(x0, x1, t, sigma_min).velocity
    ahead, behind = linear_path(x0, x1, t + h, sigma_min), linear_path(x0, x1, t - h, sigma_min)
    assert torch.allclose(u, (ahead.x_t - behind.x_t) / (2 * h), atol=1e-8)


@pytest.mark.parametrize(("sigma_min", "time_sampling"), [(0.0, "uniform"), (0.1, "logit_normal")])
def test_loss_vanishes_for_the_exact_field_of_a_point_mass(
    sigma_min: float, time_sampling: str
) -> None:
    """Data = one point c: x_0 is recovered from x_t, so the exact field is known without the
    process (the straight line from x_t through x_0's image hits c at t = 1)."""
    c = torch.tensor([0.7, -1.3], dtype=torch.float64)

    def v(x: Tensor, t: Tensor) -> Tensor:
        tt = append_dims(t, x.ndim)
        x0 = (x - tt * c) / (1 - (1 - sigma_min) * tt)
        return c - (1 - sigma_min) * x0

    process = FlowMatching(sigma_min=sigma_min, time_sampling=time_sampling)
    y = c.expand(256, 2).clone()
    g = torch.Generator().manual_seed(0)
    loss = process.loss(FieldNet(v), y, generator=g)
    assert loss.shape == (256,) and float(loss.max()) < 1e-20
    # The zero field pays E||u||² / N, u = c − (1 − σ_min) x_0.
    zero = process.loss(FieldNet(lambda x, t: torch.zeros_like(x)), y, generator=g)
    expected = (c.pow(2).sum() + (1 - sigma_min) ** 2 * 2) / 2
    assert float(zero.mean()) == pytest.approx(float(expected), rel=0.15)


def test_logit_normal_times() -> None:
    process = FlowMatching(time_sampling="logit_normal", logit_mean=0.5, logit_std=0.8)
    t = process.sample_t(20000, torch.Generator().manual_seed(0), torch.zeros(1))
    logit = torch.log(t / (1 - t))
    assert float(logit.mean()) == pytest.approx(0.5, abs=0.03)
    assert float(logit.std()) == pytest.approx(0.8, abs=0.03)


# --------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------


def test_denoiser_is_predicted_data_and_sigma_t_round_trip() -> None:
    process, net = FlowMatching(), random_mlp()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=g, dtype=torch.float64) * 3
    sigma = torch.rand(16, generator=g, dtype=torch.float64) * 20
    t = 1 / (1 + sigma)
    x_t = t[:, None] * x
    v = net(x_t, t)
    expected = x_t + (1 - t[:, None]) * v  # x̂_1 = x_t + (1 − t) v
    assert torch.allclose(process.denoiser(net).denoise(x, sigma), expected, atol=1e-12)
    assert torch.allclose(process.sigma_to_t(process.t_to_sigma(t)), t, atol=1e-14)
    grid = process.sigmas(10)
    assert grid[0] == pytest.approx(999.0) and grid[-1] == 0 and (grid.diff() < 0).all()


def test_denoiser_view_of_the_oracle_is_the_empirical_denoiser() -> None:
    """Independent route: the FM oracle velocity seen through the σ-frame is exactly the
    Gaussian posterior mean over the data (docs/math.md §3, §6)."""
    data = torch.randn(7, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    view = FlowMatching().denoiser(FieldNet(flow_matching_velocity(data)))
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    for sigma in (0.05, 0.3, 1.0, 5.0, 50.0):
        expected = empirical_denoiser(data)(x, sigma)
        assert torch.allclose(view.denoise(x, torch.tensor(sigma)), expected, atol=1e-9)


def test_euler_in_sigma_is_euler_in_t() -> None:
    """DDIM (Euler on the σ-frame PF-ODE) on the grid σ(t_i) is the flow-matching Euler step
    on t_i, up to the frame scale x̃ = x_t / t."""
    from physgen.solvers.ode import euler

    process, net = FlowMatching(), random_mlp(1)
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps, t_min = 12, process.options.t_min
    t_grid = torch.linspace(t_min, 1, steps + 1, dtype=torch.float64)
    in_t = euler(process.ode(net).field, x0, t_grid)
    in_sigma = euler(process.denoiser(net).as_ode().field, x0 / t_min, process.sigmas(steps))
    assert torch.allclose(in_t, in_sigma, atol=1e-10)


def test_score_view_of_standard_normal_data() -> None:
    """y ~ N(0, I): x̃ = y + σ n ~ N(0, (1 + σ²) I), score −x̃ / (1 + σ²)."""
    net = FieldNet(gaussian_velocity(torch.zeros(2, dtype=torch.float64), 1.0))
    view = FlowMatching().score(net)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    for sigma in (0.1, 1.0, 10.0):
        expected = -x / (1 + sigma**2)
        assert torch.allclose(view.score(x, torch.tensor(sigma)), expected, atol=1e-10)
    for process in (OTFlowMatching(), FlowMatching(source="8gaussians"), RectifiedFlow()):
        with pytest.raises(ConfigError, match="no 'score' view"):
            process.view("score", net)
        assert "score" not in process.views()
        denoiser = process.view("denoiser", net)  # the σ-frame ODE holds for any coupling
        assert not isinstance(denoiser, ScoreView)


# --------------------------------------------------------------------------------------
# Samplers through physgen.sampling.sample
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "steps", "tol"),
    [("heun", 32, 2e-3), ("rk4", 16, 1e-4), ("dopri5", 1, 1e-4), ("dpmpp_2m", 160, 2e-3)],
)
def test_samplers_follow_the_exact_gaussian_flow(sampler: str, steps: int, tol: float) -> None:
    """x_1 = μ + s x_0 from each prior draw. dpmpp_2m starts at σ_max = 999 from
    x̃ = σ_max x_0, dropping the data's share of x̃ (an error ≈ s μ / σ_max ≈ 5e-4), and
    converges slowly from σ_max = 999 (error 1.8e-3 at 80 steps, 5.5e-4 at 160, measured
    against the exact σ-frame flow with the exact EDM-frame Gaussian denoiser too)."""
    net = FieldNet(gaussian_velocity(MU, S))
    out = sample(FlowMatching(), net, (2,), n=64, sampler=sampler, steps=steps, seed=3,
                 dtype=torch.float64)  # fmt: skip
    exact = MU + S * prior_draws(3, 64)
    assert float((out.x - exact).abs().max()) < tol


def test_score_samplers_reach_the_gaussian_data() -> None:
    net = FieldNet(gaussian_velocity(MU, S))
    out = sample(FlowMatching(), net, (2,), n=500, sampler="em", steps=100, seed=0,
                 dtype=torch.float64)  # fmt: skip
    se = S / math.sqrt(500)  # of the mean; the std's is about se / √2
    assert torch.allclose(out.x.mean(0), MU, atol=5 * se)
    assert torch.allclose(out.x.std(0), torch.full((2,), S, dtype=torch.float64), atol=4 * se)


def test_oracle_ode_carries_noise_onto_data_points() -> None:
    data = torch.randn(5, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    net = FieldNet(flow_matching_velocity(data))
    for sampler in ("euler", "dpmpp_2m"):
        out = sample(FlowMatching(), net, (2,), n=64, sampler=sampler, steps=100, seed=0,
                     dtype=torch.float64)  # fmt: skip
        nearest = torch.cdist(out.x, data).min(1).values
        assert float(nearest.max()) < 1e-6, sampler
        assert len(torch.cdist(out.x, data).argmin(1).unique()) == 5  # every point is reached


def test_dataset_source_prior_is_per_sample() -> None:
    prior = source_prior("8gaussians")
    whole = prior((6, 2), generator=StackedGenerator.for_samples(0, 0, 6))
    part = prior((4, 2), generator=StackedGenerator.for_samples(0, 2, 4))
    assert torch.equal(whole[2:], part)
    radius = prior((2000, 2), generator=torch.Generator().manual_seed(0)).norm(dim=1)
    assert float(radius.mean()) == pytest.approx(math.sqrt(2 * (1 - 0.01)), abs=0.02)
    process = FlowMatching(source="8gaussians")
    loss = process.loss(random_mlp().float(), torch.randn(8, 2), generator=torch.Generator())
    assert loss.shape == (8,) and torch.isfinite(loss).all()


# --------------------------------------------------------------------------------------
# Straightness and reflow
# --------------------------------------------------------------------------------------


def test_straightness_closed_forms() -> None:
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert straightness(lambda x, t: shift.expand_as(x), x0, 10) == pytest.approx(0, abs=1e-20)
    # Rotation v = ω J x: S = (ω² − 2(1 − cos ω)) E|x_0|².
    omega = math.pi / 2
    jmat = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    expected = (omega**2 - 2 * (1 - math.cos(omega))) * float(x0.pow(2).sum(1).mean())
    rotation = [straightness(lambda x, t: omega * x @ jmat.T, x0, n) for n in (50, 100)]
    assert rotation[1] == pytest.approx(expected, rel=2e-4)
    ratio = (rotation[0] - expected) / (rotation[1] - expected)
    assert ratio == pytest.approx(4, rel=0.05)  # chords: second order in the step
    # A view on an increasing grid runs in the flow-matching frame already: the same value.
    # (A decreasing grid is a σ-frame, mapped to it: tests/test_sampling_surface.py.)
    view = ODEView(
        field=lambda x, t: omega * x @ jmat.T,
        grid=lambda n: torch.linspace(0, 1, n + 1, dtype=torch.float64),
        prior=source_prior("gaussian"),
    )
    assert straightness(view, x0, 100) == pytest.approx(rotation[1], rel=1e-12)


def test_pairs_are_ode_pairs_in_the_standard_normal_frame(tmp_path: Path) -> None:
    """z is each sample's own prior draw, whatever the sampler's frame (t or σ)."""
    net = FieldNet(gaussian_velocity(MU, S))
    for sampler, steps, tol in (("dopri5", 1, 1e-4), ("dpmpp_2m", 160, 2e-3)):
        pairs = generate_pairs(FlowMatching(), net, (2,), 64, sampler=sampler, steps=steps,
                               seed=5, batch_size=20)  # fmt: skip
        assert torch.allclose(pairs.z.double(), prior_draws(5, 64).float().double(), atol=1e-6)
        assert float((pairs.x - (MU + S * pairs.z.double())).abs().max()) < tol
    edm = physgen.get_process("edm")
    assert gaussian_scale(edm.denoiser(net).prior, (2,)) == pytest.approx(80.0)
    assert gaussian_scale(source_prior("8gaussians"), (2,)) is None
    with pytest.raises(ConfigError, match="deterministic"):
        generate_pairs(FlowMatching(), net, (2,), 4, sampler="em")


def test_reflow_pairs_from_a_dataset_source(tmp_path: Path) -> None:
    """With an 8gaussians source, z is the source draw itself; the student must share it."""
    shift = torch.tensor([0.5, -1.0])
    process, net = FlowMatching(source="8gaussians"), FieldNet(lambda x, t: shift.expand_as(x))
    path = write_pairs(process, net, (2,), 16, out_path=tmp_path / "p.h5", sampler="euler",
                       steps=4, seed=1)  # fmt: skip
    pairs, meta = load_pairs(path)
    drawn = source_prior("8gaussians")((16, 2), generator=StackedGenerator.for_samples(1, 0, 16))
    assert torch.equal(pairs.z, drawn) and torch.allclose(pairs.x, drawn + shift)
    assert meta["z_law"] == "teacher_prior"
    assert meta["teacher_process"]["options"]["source"] == "8gaussians"
    RectifiedFlow(pairs=str(path), source="8gaussians").loss(random_mlp().float(), pairs.x[:4])
    with pytest.raises(ConfigError, match="set source=8gaussians"):
        RectifiedFlow(pairs=str(path)).loss(random_mlp().float(), pairs.x[:4])
    with pytest.raises(ConfigError, match="ode-view sampler"):
        generate_pairs(process, net, (2,), 4, sampler="dpmpp_2m")


class EDMGaussianNet(nn.Module):
    """The raw backbone F whose EDM-preconditioned denoiser (EDM eq. 7) is the exact denoiser
    ``μ + s²/(s² + σ²)(x − μ)`` of y ~ N(μ, s² I): F = (D − c_skip x) / c_out."""

    def __init__(self, sigma_data: float):
        super().__init__()
        self.sigma_data = sigma_data
        self.anchor = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x_in: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        from physgen.core.precond import edm_coefficients

        sigma = (4 * c_noise.double()).exp()  # c_noise = ln σ / 4 (EDM Table 1)
        c = edm_coefficients(sigma, self.sigma_data)
        x = x_in.double() / append_dims(c.c_in, x_in.ndim)
        s2 = append_dims(S**2 / (S**2 + sigma**2), x.ndim)
        denoised = MU + s2 * (x - MU)
        out = (denoised - append_dims(c.c_skip, x.ndim) * x) / append_dims(c.c_out, x.ndim)
        return out.to(x_in.dtype)


def test_reflow_pairs_from_an_edm_teacher() -> None:
    """Any process with an ODE view: EDM's prior is N(0, 80² I), so z = prior / 80, and x is
    the exact PF-ODE flow map from σ_max (docs/math.md §8) of the prior state."""
    from physgen.testing.oracles import gaussian_flow

    edm = physgen.get_process("edm")
    pairs = generate_pairs(edm, EDMGaussianNet(0.5), (2,), 32, sampler="dopri5", steps=18,
                           seed=2, options={"rtol": 1e-7, "atol": 1e-7})  # fmt: skip
    assert torch.allclose(pairs.z.double(), prior_draws(2, 32).float().double(), atol=1e-6)
    exact = gaussian_flow(80 * pairs.z.double(), 80.0, 0.0, MU, S)
    assert float((pairs.x - exact).abs().max()) < 1e-4  # measured 8.5e-6 (float32)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_pair_file_round_trip(tmp_path: Path, suffix: str) -> None:
    g = torch.Generator().manual_seed(0)
    pairs = Pairs(torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g))
    path = save_pairs(tmp_path / f"pairs{suffix}", pairs, meta={"z_law": "standard_normal"})
    loaded, meta = load_pairs(path)
    assert torch.equal(loaded.z, pairs.z) and torch.equal(loaded.x, pairs.x)
    assert meta["z_law"] == "standard_normal"
    assert torch.equal(physgen.load_dataset(str(path), 40).x, pairs.x)  # the data half
    assert [p.name for p in tmp_path.iterdir()] == [f"pairs{suffix}"]  # no temporary left
    process = RectifiedFlow(pairs=str(path))
    loss = process.loss(random_mlp().float(), pairs.x[[3, 1, 3]], generator=g)
    assert loss.shape == (3,)
    with pytest.raises(ConfigError, match="source=gaussian"):
        RectifiedFlow(pairs=str(path), source="moons").loss(random_mlp().float(), pairs.x[:2])
    with pytest.raises(ConfigError, match="pairs=PAIRS"):
        RectifiedFlow().loss(random_mlp().float(), pairs.x[:2])


@pytest.mark.slow
def test_reflow_straightens_the_oracle_flow(tmp_path: Path) -> None:
    """1-rectified flow = the exact I-CFM field of 8 points; reflow on its ODE pairs and a
    briefly trained rectified flow is much straighter (Liu et al. 2023, Theorem 3.6)."""
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    data = 1.5 * torch.stack([angle.cos(), angle.sin()], 1)
    teacher = FieldNet(flow_matching_velocity(data))
    x0 = prior_draws(123, 256)
    s_teacher = straightness(teacher.velocity, x0, 100, solver="euler")
    path = write_pairs(FlowMatching(), teacher, (2,), 1024, out_path=tmp_path / "pairs.npz",
                       sampler="euler", steps=100, seed=0)  # fmt: skip
    student_process = RectifiedFlow(pairs=str(path))
    torch.manual_seed(0)  # the backbone's init
    net = physgen.get_network("mlp", (2,), width=64, depth=2)
    run = _train(student_process, net, physgen.load_dataset(str(path), 1024), steps=300,
                 batch_size=256, lr=3e-3, ema_decay=0.99, seed=0)  # fmt: skip
    view = student_process.ode(run.ema)
    s_student = straightness(view, x0.float(), 100)
    assert s_student < 0.1 * s_teacher, (s_student, s_teacher)  # measured 0.021 vs 1.28
    # ... and it transports (a zero field is straight too): displacement as the pairs'.
    pairs, _ = load_pairs(path)
    with torch.no_grad():
        end = sample(student_process, run.ema, (2,), n=256, sampler="rk4", steps=50,
                                seed=0).x  # fmt: skip
    moved = end - view.prior((256, 2), generator=StackedGenerator.for_samples(0, 0, 256))
    assert float(moved.pow(2).sum(1).mean()) > 0.5 * float((pairs.x - pairs.z).pow(2).sum(1).mean())


# --------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_reflow_and_sample_from_checkpoints(tmp_path: Path) -> None:
    from physgen.api import load_checkpoint
    from physgen.sampling.reflow import reflow_dataset

    data = physgen.load_dataset("moons", 2000, seed=0)
    torch.manual_seed(0)
    net = physgen.get_network("mlp", (2,), width=64, depth=2)
    config = {"width": 64, "depth": 2, "emb_dim": 64, "embedding": "positional"}
    meta = {"process": {"name": "otcfm"}, "network": {"name": "mlp", "config": config},
            "dataset": {"num_classes": 0}}  # fmt: skip
    _train(physgen.get_process("otcfm"), net, data, steps=200, batch_size=128, seed=0,
           checkpoint=tmp_path / "otcfm.safetensors", meta=meta)  # fmt: skip
    pairs = reflow_dataset(tmp_path / "otcfm.safetensors", 500, sampler="dopri5",
                           seed=1, out_path=tmp_path / "pairs.npz")  # fmt: skip
    _, info = load_pairs(pairs)
    assert info["z_law"] == "standard_normal" and info["teacher_process"]["name"] == "otcfm"
    rectified = physgen.get_process("rectified", pairs=str(pairs))
    meta["process"] = {"name": "rectified"}
    _train(rectified, net, physgen.load_dataset(str(pairs), 500), steps=100, batch_size=128,
           seed=0, checkpoint=tmp_path / "rect.safetensors", meta=meta)  # fmt: skip
    ckpt = load_checkpoint(tmp_path / "rect.safetensors")
    assert ckpt.process.options.pairs == str(pairs)
    out = ckpt.sample(500, sampler="dopri5", steps=1, seed=0)
    assert out.x.shape == (500, 2) and torch.isfinite(out.x).all()
    assert float(out.x.std(0).min()) > 0.3  # spread out, not collapsed
    assert np.isfinite(straightness(ckpt.process.ode(ckpt.ema), torch.randn(64, 2), 20))


@pytest.mark.slow
def test_cli_train_and_sample_cfm_otcfm_rectified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``physgen train --process cfm|otcfm|rectified`` then ``physgen sample`` on default data
    (in-process through click's runner). ``rectified --reflow-from`` makes its pairs from the
    otcfm checkpoint, a second ``--reflow-from`` chains a 2-rectified flow, and ``sample``
    reports straightness and metrics against the teacher's dataset."""
    from click.testing import CliRunner

    from physgen.cli import cli

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def physgen_cli(*args: str) -> None:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output[-2000:]

    runs = [("cfm", []), ("otcfm", []),
            ("rectified", ["--reflow-from", "otcfm/checkpoint.safetensors"]),
            ("rectified2", ["--reflow-from", "rectified/checkpoint.safetensors"])]  # fmt: skip
    for out, extra in runs:
        process = out.rstrip("2")
        physgen_cli("train", "--process", process, "--steps", "100", "--out", out, "-q",
                    "--n-data", "500", *extra)  # fmt: skip
        physgen_cli("sample", f"{out}/checkpoint.safetensors", "--sampler", "dopri5",
                    "--steps", "1", "-n", "200", "-q", "--straightness", "64")  # fmt: skip
        metrics = physgen.read_run(tmp_path / out / "samples-dopri5.h5").metrics
        assert {"sliced_w2", "straightness"} <= set(metrics)
        assert list((tmp_path / out).glob("samples*.png"))
    _, info = load_pairs(tmp_path / "rectified2" / "reflow_pairs.npz")
    assert info["teacher_process"]["name"] == "rectified"
    assert info["teacher_checkpoint"] == "rectified/checkpoint.safetensors"


def test_cli_reflow_from_needs_a_pairs_process(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from physgen.cli import cli

    result = CliRunner().invoke(
        cli, ["train", "-p", "cfm", "--reflow-from", "x.safetensors", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "does not train on reflow pairs" in result.output
    assert "Traceback" not in result.output
