"""physgen.solve and physgen.steps_within: one sampler on given start points, any field.

Closed forms: Gaussian data ``N(μ, s² I)`` under the EDM PF-ODE moves as
``x' = μ + sqrt((s² + σ'²)/(s² + σ²)) (x − μ)`` (Karras et al. 2022, eq. 3 with the Gaussian
denoiser); the linear flow-matching path with Gaussian data has the velocity of
tests/test_likelihood.py and ends at ``μ + s x₀``. The driver comparison is an independent
route: :func:`physgen.sample` builds the same view, prior draws and grid itself.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import physgen
from physgen.core.process import append_dims
from physgen.core.rng import StackedGenerator
from physgen.errors import ConfigError
from physgen.solvers.grids import karras

F64 = torch.float64
MU, S = torch.tensor([0.5, -1.0, 2.0], dtype=F64), 0.6


def gaussian_denoise(x: Tensor, sigma: Tensor) -> Tensor:
    sigma = append_dims(torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0]), x.ndim)
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def start(n: int = 16) -> Tensor:
    return 80.0 * torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=F64)


def test_public_surface():
    for name in ("solve", "steps_within", "log_likelihood"):
        assert name in physgen.__all__ and callable(getattr(physgen, name))
    assert physgen.solve is physgen.sampling.solve.solve


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_3m", "unipc"])
def test_denoiser_matches_the_gaussian_flow_map(sampler: str):
    x = start()
    grid = karras(64, 0.002, 80.0)
    out = physgen.solve(sampler, x, grid, denoise=gaussian_denoise)
    # into σ = 0 every sampler returns D(x; σ_min) of its state at σ_min
    at_min = MU + math.sqrt((S**2 + 0.002**2) / (S**2 + 80.0**2)) * (x - MU)
    exact = gaussian_denoise(at_min, torch.tensor(0.002))
    # a 1e-2 bound on states that start at scale 80 (measured 5e-3 heun, 7e-4 dpmpp_3m, 2e-4 unipc)
    assert (out.x - exact).abs().max() < 1e-2
    assert out.nfe == (127 if sampler == "heun" else 64) and out.sampler == sampler


def test_velocity_field_on_flow_matching_time():
    mu, s = torch.tensor([1.0, -0.5], dtype=F64), 0.4

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype)
        v = (1 - t) ** 2 + t**2 * s**2
        return mu + (t * s**2 - (1 - t)) / v * (x - t * mu)

    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    grid = torch.linspace(0, 1, 41, dtype=F64)
    out = physgen.solve("rk4", x0, grid, velocity=velocity)
    torch.testing.assert_close(out.x, mu + s * x0, atol=1e-6, rtol=0)  # the OT map of N(0, I)
    assert out.nfe == 4 * 40


def test_a_view_reproduces_the_driver_bitwise():
    process = physgen.get_process("edm", sigma_data=0.5)
    net = physgen.get_network("mlp", (2,))
    ref = physgen.sample(process, net, (2,), n=6, sampler="dpmpp_2m", steps=7, seed=3)
    view = process.view("denoiser", net)
    gen = StackedGenerator.for_samples(3, 0, 6, torch.device("cpu"))
    x = view.prior((6, 2), generator=gen, device="cpu", dtype=torch.float32)
    out = physgen.solve("dpmpp_2m", x, 7, view=view)
    assert torch.equal(out.x, ref.x) and out.nfe == ref.nfe == 7


def test_on_step_and_options():
    seen: list[int] = []
    out = physgen.solve(
        "dpmpp_2m",
        start(),
        karras(10, 0.002, 80.0),
        denoise=gaussian_denoise,
        afs=True,
        on_step=lambda i, x: seen.append(i),
    )
    assert out.nfe == 9 and seen == list(range(10))  # afs: D = 0 at σ_max is free


@pytest.mark.parametrize(
    ("sampler", "budget", "options", "steps"),
    [
        ("heun", 35, {}, 18),
        ("heun", 6, {}, 3),
        ("euler", 10, {}, 10),
        ("dpmpp_2m", 10, {}, 10),
        ("dpmpp_2m", 10, {"afs": True}, 11),
        ("rk4", 20, {}, 5),
    ],
)
def test_steps_within_a_budget(sampler: str, budget: int, options: dict, steps: int):
    assert physgen.steps_within(sampler, budget, **options) == steps
    # and solve spends exactly what the rule promised, never more than the budget
    grid = karras(steps, 0.002, 80.0)
    out = physgen.solve(sampler, start(), grid, denoise=gaussian_denoise, **options)
    assert out.nfe <= budget


def test_steps_within_on_a_grid_not_ending_at_zero():
    linspace = lambda steps: torch.linspace(0, 1, steps + 1, dtype=F64)  # noqa: E731
    assert physgen.steps_within("heun", 35, grid=linspace) == 17  # 2 per step, no σ = 0 step


def test_errors_are_one_line_config_errors():
    x, grid = start(), karras(4, 0.002, 80.0)
    with pytest.raises(ConfigError, match="exactly one of"):
        physgen.solve("heun", x, grid)
    with pytest.raises(ConfigError, match="exactly one of"):
        physgen.solve("heun", x, grid, denoise=gaussian_denoise, velocity=gaussian_denoise)
    with pytest.raises(ConfigError, match="no option 'S_churn'"):
        physgen.solve("dpmpp_2m", x, grid, denoise=gaussian_denoise, S_churn=1.0)
    with pytest.raises(ConfigError, match="cannot run on velocity="):
        physgen.solve("dpmpp_2m", x, grid, velocity=gaussian_denoise)
    with pytest.raises(ConfigError, match="needs view="):
        physgen.solve("heun", x, 4, denoise=gaussian_denoise)
    with pytest.raises(ConfigError, match="adaptive"):
        physgen.steps_within("dopri5", 10)
    with pytest.raises(ConfigError, match="nfe must be"):
        physgen.steps_within("heun", 0)
