"""What a process serves and what a sample reports: per-instance views, default samplers,
signature-derived sampler options, the one exponential step, guided NFE, straightness in one
frame, σ-schedules for fixed-step ODE solvers, and adaptive solvers reported by NFE alone."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from torch import Tensor, nn

import physgen
from physgen.cli import cli
from physgen.cli.sample_run import _straightness
from physgen.core.process import DenoiserView, ODEView, gaussian_prior, karras_sigmas
from physgen.errors import ConfigError
from physgen.nets import MLP
from physgen.registry import get_registry
from physgen.sampling import compatible_samplers, describe_views, sample
from physgen.sampling.reflow import straightness
from physgen.solvers import exponential, grids, multistep, ode
from physgen.testing.oracles import GaussianMixture

F64 = torch.float64
SCORE_SAMPLERS = {"ancestral", "ddim", "em", "heun_churn", "langevin", "pc"}


def _net(num_classes: int = 0, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = MLP(2, width=16, depth=2, emb_dim=8, num_classes=num_classes)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net.eval()


class CountingNet(nn.Module):
    """Counts the rows it is evaluated on: a batched guided call evaluates 2B rows."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.rows = net, 0

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None) -> Tensor:
        self.rows += x.shape[0]
        return self.net(x, noise_label, class_labels)


# -- per-instance views (issue 16 item 6) --------------------------------------------------


def test_views_follow_the_options_of_the_instance() -> None:
    cfm, otcfm, rectified = (physgen.get_process(n) for n in ("cfm", "otcfm", "rectified"))
    assert set(compatible_samplers(cfm)) >= SCORE_SAMPLERS
    for p in (otcfm, rectified):
        assert "score" not in p.views()
        assert not SCORE_SAMPLERS & set(compatible_samplers(p))
        assert {"heun", "dpmpp_2m"} <= set(compatible_samplers(p))
    # the option, not the class, decides: otcfm with an independent coupling has a score view
    assert "score" in physgen.get_process("otcfm", coupling="independent").views()
    assert "score" not in physgen.get_process("cfm", coupling="sinkhorn").views()
    assert "score" not in describe_views(type(otcfm)).split(" (")[0]
    assert "score only with coupling=independent" in describe_views(type(otcfm))


def test_refused_sampler_is_one_line_listing_the_ones_that_fit() -> None:
    process = physgen.get_process("otcfm")
    with pytest.raises(ConfigError) as err:
        sample(process, _net(), (2,), n=4, sampler="ddim", steps=2)
    msg = str(err.value)
    assert "\n" not in msg and "'score' view" in msg and "coupling=independent" in msg
    assert msg.endswith(", ".join(compatible_samplers(process)))


def test_plugins_lists_the_default_instance_views() -> None:
    out = CliRunner().invoke(cli, ["plugins", "--kind", "processes"]).output
    lines = out.splitlines()
    views = {
        lines[i].split()[0]: lines[i + 1] for i in range(len(lines) - 1) if "views:" in lines[i + 1]
    }
    assert "score" not in views["otcfm"].split("(")[0] and "score" not in views["rectified"]
    assert "ode, denoiser, score" in views["cfm"]
    assert "default sampler consistency" in views["ct"]


# -- default sampler per process (issue 16 item 11) -------------------------------------------


def test_every_process_has_a_default_sampler_it_serves() -> None:
    for name in get_registry().names("processes"):
        process = physgen.get_process(name)
        assert process.default_sampler in compatible_samplers(process), name


def test_sample_without_a_sampler_uses_the_process_default() -> None:
    for name, expected in (("ct", "consistency"), ("ict", "consistency"), ("edm", "heun")):
        process = physgen.get_process(name)
        out = sample(process, _net(), (2,), n=4, steps=2)
        assert out.sampler == expected and torch.isfinite(out.x).all()


def test_cli_sample_without_sampler_on_ct_and_adaptive_naming(tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "ct"
    args = ["train", "-p", "ct", "--steps", "2", "--n-data", "64", "--batch-size", "16"]
    r = runner.invoke(cli, [*args, "--out", str(run), "-q"])
    assert r.exit_code == 0, r.output
    ckpt = str(run / "checkpoint.safetensors")
    common = ["-n", "8", "-q", "--no-metrics", "--straightness", "0"]
    r = runner.invoke(cli, ["sample", ckpt, "--steps", "2", *common])
    assert r.exit_code == 0, r.output
    assert (run / "samples-consistency-2.h5").is_file()
    # an adaptive solver: NFE only, and a file name without steps (issue 16 item 17)
    run = tmp_path / "cfm"
    r = runner.invoke(cli, [*args, "-p", "cfm", "--out", str(run), "-q"])
    assert r.exit_code == 0, r.output
    ckpt = str(run / "checkpoint.safetensors")
    r = runner.invoke(cli, ["sample", ckpt, "-s", "dopri5", "--opt", "rtol=1e-3", *common])
    assert r.exit_code == 0, r.output
    assert "steps" not in r.output.splitlines()[0].replace("adaptive steps", "")
    assert "adaptive steps, NFE" in r.output
    h5 = run / "samples-dopri5.h5"
    attrs = physgen.read_run(h5).samples["samples"][1]
    assert "steps" not in attrs and attrs["nfe"] > 0 and attrs["sampler"] == "dopri5"


# -- sampler options from the signature (issue 15 item 6) ------------------------------------


def test_sampler_options_are_the_signature_defaults() -> None:
    for spec, _ in get_registry().items("samplers"):
        params = inspect.signature(spec.fn).parameters.values()
        kw = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
        kw.pop("generator"), kw.pop("on_step")
        assert spec.options == kw, spec.name
    langevin = get_registry().sampler("langevin")
    assert langevin.options == {"corrector_steps": 10, "eps": None}
    assert langevin.parse_options({"eps": "1e-5", "corrector_steps": "3"}) == {
        "corrector_steps": 3,
        "eps": 1e-5,
    }
    with pytest.raises(ConfigError, match="sampler 'langevin' has no option 'rho'"):
        langevin.parse_options({"rho": "1"})
    with pytest.raises(ConfigError, match="eps='x' is not a valid float"):
        langevin.parse_options({"eps": "x"})


# -- one exponential step (issue 15 item 4) ------------------------------------------------


def test_ancestral_step_closed_forms() -> None:
    sigma, nxt = torch.tensor(3.0, dtype=F64), torch.tensor(1.2, dtype=F64)
    down, up = exponential.ancestral_step(sigma, nxt, 0.0)
    assert (float(down), float(up)) == (1.2, 0.0)
    down, up = exponential.ancestral_step(sigma, nxt, 1.0)
    assert float(down) == pytest.approx(1.2**2 / 3.0, rel=1e-15)  # DDPM posterior mean
    assert float(up) ** 2 == pytest.approx(1.2**2 * (1 - 1.2**2 / 9.0), rel=1e-14)  # β̃ over ᾱ
    for eta in (0.3, 0.7):
        down, up = exponential.ancestral_step(sigma, nxt, eta)
        assert float(down**2 + up**2) == pytest.approx(1.44, rel=1e-14)


def test_ddim_and_dpmpp_first_step_are_the_exact_solution_with_d_frozen() -> None:
    """With D held fixed the PF-ODE dx/dσ = (x − D)/σ has x(σ') = D + (σ'/σ)(x − D): one DDIM
    (η = 0) step and the first DPM-Solver++(2M) step take exactly that."""
    gmm = GaussianMixture.random(3, 2, std=0.3, seed=0, dtype=F64)
    x = 5 * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = torch.tensor([5.0, 2.0, 0.5, 0.0], dtype=F64)
    d = gmm.denoise(x, grid[0])
    exact = d + 0.4 * (x - d)
    first: list[Tensor] = []
    multistep.dpmpp_2m(
        gmm.denoise, x, grid, on_step=lambda i, y: first.append(y) if i == 0 else None
    )
    torch.testing.assert_close(
        exponential.ddim(gmm.denoise, x, grid[:2]), exact, rtol=1e-14, atol=1e-14
    )
    torch.testing.assert_close(first[0], exact, rtol=1e-14, atol=1e-14)


# -- guided NFE (issue 16 item 9) ------------------------------------------------------------


@pytest.mark.parametrize(("sampler", "steps"), [("heun", 5), ("dpmpp_2m", 6), ("euler", 4)])
def test_guided_nfe_counts_network_evaluations(sampler: str, steps: int) -> None:
    process, n = physgen.get_process("edm"), 4
    labels = torch.tensor([0, 1, 2, 1])
    plain = sample(process, _net(3), (2,), n=n, sampler=sampler, steps=steps, cond=labels)
    for guidance, interval in ((1.0, None), (2.0, None), (2.0, (0.5, 10.0)), (0.0, None)):
        net = CountingNet(_net(3))
        out = sample(process, net, (2,), n=n, sampler=sampler, steps=steps, cond=labels,
                     guidance=guidance, guidance_interval=interval)  # fmt: skip
        assert out.nfe == net.rows // n, (guidance, interval)
        if guidance == 2.0 and interval is None:
            assert out.nfe == 2 * plain.nfe
        if interval is not None:
            assert plain.nfe < out.nfe < 2 * plain.nfe


# -- straightness in one frame (issue 16 item 10) ---------------------------------------------


def _edm_ode(denoise) -> ODEView:  # type: ignore[no-untyped-def]
    return DenoiserView(
        denoise=denoise, sigmas=lambda n: karras_sigmas(n, 0.002, 80.0, zero=False),
        prior=gaussian_prior(80.0),
    ).as_ode()  # fmt: skip


def test_straightness_of_a_straight_sigma_frame_flow_is_zero() -> None:
    """A point mass at μ: D = μ, x_σ = μ + σ z, a straight line in the flow-matching frame."""
    mu = torch.tensor([0.5, -1.0], dtype=F64)
    grid = lambda n: karras_sigmas(n, 0.002, 80.0)  # noqa: E731
    view = DenoiserView(lambda x, s: mu.expand_as(x), grid, gaussian_prior(80.0)).as_ode()
    x0 = 80.0 * torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert straightness(view, x0, 18) == pytest.approx(0, abs=1e-20)


def test_straightness_is_the_same_for_edm_and_the_equivalent_flow() -> None:
    """The σ-frame PF-ODE of a mixture and the flow-matching ODE of the same data (velocity
    (x̂_1 − x_t)/(1 − t) with x̂_1 = D(x_t/t; (1 − t)/t)) on the same times give one value."""
    gmm = GaussianMixture.random(3, 2, std=0.3, seed=0, dtype=F64)

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=F64)
        return (gmm.denoise(x / t, (1 - t) / t) - x) / (1 - t)

    edm = _edm_ode(gmm.denoise)
    flow = ODEView(field=velocity, grid=lambda n: 1 / (1 + edm.grid(n)), prior=gaussian_prior(1.0))
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    s_edm = straightness(edm, 80.0 * z, 400)
    s_flow = straightness(flow, 80.0 / 81.0 * z, 400)
    assert s_edm == pytest.approx(s_flow, rel=1e-3)
    assert 0.01 < s_edm < 10  # O(data scale²), not O(σ_max²)


def test_cli_straightness_honours_guidance() -> None:
    ckpt = SimpleNamespace(process=physgen.get_process("edm"), ema=_net(3), event_shape=(2,))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    plain = _straightness(ckpt, 8, 0, torch.device("cpu"), labels)
    guided = _straightness(ckpt, 8, 0, torch.device("cpu"), labels, guidance=4.0)
    uncond = _straightness(ckpt, 8, 0, torch.device("cpu"), torch.full((8,), -1))
    assert guided != pytest.approx(plain, rel=1e-3)
    assert _straightness(ckpt, 8, 0, torch.device("cpu"), labels, guidance=0.0) == pytest.approx(
        uncond
    )


# -- σ-schedules for fixed-step ODE solvers (issue 16 item 12) --------------------------------


@pytest.mark.parametrize("sampler", ["euler", "heun", "rk4"])
def test_schedule_applies_to_fixed_step_ode_solvers_on_a_sigma_grid(sampler: str) -> None:
    process, net = physgen.get_process("vp"), _net().double()
    out = sample(process, net, (2,), n=8, sampler=sampler, steps=6, schedule="karras",
                 schedule_options={"rho": "5"}, dtype=F64, seed=2)  # fmt: skip
    view = process.ode(net)
    grid = grids.regrid(view.grid(6), "karras", rho=5)
    assert not torch.equal(grid, view.grid(6))
    from physgen.core.rng import StackedGenerator

    x = view.prior((8, 2), generator=StackedGenerator.for_samples(2, 0, 8, "cpu"), dtype=F64)
    expected = getattr(ode, sampler)(view.field, x, grid)
    torch.testing.assert_close(out.x, expected, rtol=1e-12, atol=1e-12)


def test_schedule_is_refused_where_it_means_nothing() -> None:
    net = _net()
    with pytest.raises(ConfigError, match="adaptive"):
        sample(physgen.get_process("edm"), net, (2,), n=2, sampler="dopri5", schedule="karras")
    with pytest.raises(ConfigError, match="runs in t, not σ"):
        sample(physgen.get_process("cfm"), net, (2,), n=2, sampler="heun", schedule="karras")
    out = sample(physgen.get_process("cfm"), net, (2,), n=2, sampler="dpmpp_2m", steps=3,
                 schedule="karras")  # fmt: skip
    assert math.isfinite(float(out.x.sum()))
