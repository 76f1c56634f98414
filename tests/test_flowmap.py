"""Flow maps (the ``flowmap`` view, the ``flowmap`` sampler, MeanFlow) against closed forms.

For Gaussian data ``x_1 ~ N(μ, s² I)`` and the linear path ``x_t = (1 − t) x_0 + t x_1`` with
``x_0 ~ N(0, I)``, the marginal is ``N(t μ, σ_t² I)`` with ``σ_t² = (1 − t)² + t² s²``, and the
probability-flow ODE is affine: its exact flow map is
``f*(x, t, r) = r μ + (σ_r / σ_t)(x − t μ)`` and its velocity
``v*(x, t) = μ + (σ_t'/σ_t)(x − t μ)`` with ``σ_t σ_t' = t s² − (1 − t)``. A backbone that
returns the exact average velocity ``u* = (f* − x)/(r − t)`` is therefore an oracle for every
MeanFlow identity (Geng et al. 2025, eq. 6), independent of the implementation under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from physgen.api import get_network, get_process
from physgen.sampling import sample

MU, S = 1.5, 0.3


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return ((1 - t) ** 2 + t**2 * S**2).sqrt()


def exact_flow_map(x: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    t, r = t[:, None], r[:, None]
    return r * MU + _sigma(r) / _sigma(t) * (x - t * MU)


def exact_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t[:, None]
    return MU + (t * S**2 - (1 - t)) / _sigma(t) ** 2 * (x - t * MU)


class OracleNet(torch.nn.Module):
    """``F(x, [t, r − t]) = u*(x, t, r)``: the exact average velocity of the Gaussian path."""

    def forward(self, x, labels, class_labels=None):
        t, gap = labels[:, 0], labels[:, 1]
        r = t + gap
        safe = torch.where(gap.abs() > 1e-6, gap, torch.ones_like(gap))
        average = (exact_flow_map(x, t, r) - x) / safe[:, None]
        return torch.where((gap.abs() > 1e-6)[:, None], average, exact_velocity(x, t))


def _times(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(2, n, generator=g, dtype=torch.float64).sort(dim=0).values
    return 0.05 + 0.9 * a, 0.05 + 0.9 * b


@pytest.mark.parametrize("jvp", ["autograd", "fd"])
def test_meanflow_identity_holds_for_the_exact_average_velocity(jvp):
    """u* = v* + (r − t) du*/dt along the trajectory (MeanFlow eq. 6 in physgen's time), with
    du/dt from the process's JVP (tangent (v*, 1, 0)) or its finite difference."""
    process = get_process("meanflow", jvp=jvp, fd_eps=1e-4)
    t, r = _times(64, 0)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v = exact_velocity(x, t)
    u, dudt = process.total_derivative(OracleNet(), x, t, r, v, None)
    assert torch.allclose(u, (exact_flow_map(x, t, r) - x) / (r - t)[:, None], atol=1e-12)
    rhs = v + (r - t)[:, None] * dudt
    assert torch.allclose(u, rhs, atol=1e-6 if jvp == "fd" else 1e-10), (u - rhs).abs().max()


def test_jvp_equals_finite_differences_on_a_random_network():
    net = get_network("mlp", (2,), process=get_process("meanflow"), width=32, depth=2, seed=3)
    torch.nn.init.normal_(net.out.weight, std=0.5)  # a non-trivial field (the init is zero)
    net = net.double()
    t, r = _times(16, 4)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    v = torch.randn(16, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    _, exact = get_process("meanflow").total_derivative(net, x, t, r, v, None)
    _, fd = get_process("meanflow", jvp="fd", fd_eps=1e-2).total_derivative(net, x, t, r, v, None)
    # the embedding reads time in float32, so the difference is limited by that, not by eps²
    assert torch.allclose(exact, fd, atol=2e-3, rtol=1e-3), (exact - fd).abs().max()


def test_flow_map_at_equal_times_is_the_identity_bitwise():
    net = get_network("mlp", (2,), process=get_process("meanflow"), seed=0)
    torch.nn.init.normal_(net.out.weight)
    view = get_process("meanflow").flowmap(net)
    x = torch.randn(8, 2)
    for t in (0.0, 0.3, 1.0):
        assert torch.equal(view.f(x, torch.tensor(t), torch.tensor(t)), x)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_flowmap_sampler_with_the_exact_map_draws_the_data_law(steps):
    """Any number of jumps of the exact flow map carries N(0, I) onto N(μ, s² I); NFE = jumps."""
    process = get_process("meanflow")
    out = sample(
        process, OracleNet().double(), (2,), n=20_000, sampler="flowmap", steps=steps,
        dtype=torch.float64, device="cpu",
    )  # fmt: skip
    assert out.nfe == steps
    assert abs(out.x.mean().item() - MU) < 0.01
    assert abs(out.x.std().item() - S) < 0.01
    # every jump count gives the same points: the exact map composes
    one = sample(process, OracleNet().double(), (2,), n=64, sampler="flowmap", steps=1,
                 dtype=torch.float64, device="cpu")  # fmt: skip
    many = sample(process, OracleNet().double(), (2,), n=64, sampler="flowmap", steps=steps,
                  dtype=torch.float64, device="cpu")  # fmt: skip
    assert torch.allclose(one.x, many.x, atol=1e-10)


def test_meanflow_ode_view_is_the_instantaneous_velocity():
    """The ode view integrates u(x, t, t) = v*: dopri5 lands on the exact flow map."""
    process = get_process("meanflow")
    tight = {"rtol": 1e-9, "atol": 1e-9}
    out = sample(process, OracleNet().double(), (2,), n=32, sampler="dopri5", steps=1,
                 dtype=torch.float64, device="cpu", options=tight)  # fmt: skip
    z = process.ode(OracleNet()).prior((32, 2), generator=_stacked(0, 32), dtype=torch.float64)
    exact = exact_flow_map(z, torch.zeros(32, dtype=torch.float64),
                           torch.ones(32, dtype=torch.float64))  # fmt: skip
    assert torch.allclose(out.x, exact, atol=1e-6)


def _stacked(seed: int, n: int):
    from physgen.core.rng import StackedGenerator

    return StackedGenerator.for_samples(seed, 0, n)


def test_meanflow_loss_at_s_equal_t_is_flow_matching_with_the_oracle_as_minimiser():
    """With s = t on every row (ratio 0) MeanFlow's target is the conditional velocity
    x_1 − x_0, whose conditional mean is v*: shifting the oracle by a constant c raises the
    unweighted loss by ‖c‖² (the cross term vanishes in expectation), as it must if the
    oracle is the minimiser."""
    process = get_process("meanflow", ratio=0.0, adaptive_p=0.0)
    y = MU + S * torch.randn(65536, 2, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(8)
    oracle = process.loss(OracleNet(), y, generator=g).mean()

    class Shifted(OracleNet):
        def forward(self, x, labels, class_labels=None):
            return super().forward(x, labels) + 0.3

    g = torch.Generator().manual_seed(8)
    shifted = process.loss(Shifted(), y, generator=g).mean()
    # E‖u + c − target‖² = E‖u − target‖² + ‖c‖² when u is the conditional mean of the target
    assert math.isclose(shifted - oracle, 2 * 0.3**2, rel_tol=0.1)


def test_bad_meanflow_options_are_one_line_errors():
    from physgen.errors import ConfigError

    for bad in ({"ratio": 2}, {"jvp": "magic"}, {"fd_eps": 0}, {"adaptive_c": 0}):
        with pytest.raises(ConfigError, match="MeanFlow"):
            get_process("meanflow", **bad)
