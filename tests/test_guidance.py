"""Guidance (physgen.sampling.guidance): classifier-free guidance through the backbone for every
process family, the guidance interval, and classifier guidance on an exact mixture."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from physgen.api import get_process
from physgen.errors import ConfigError
from physgen.nets import MLP
from physgen.sampling import sample
from physgen.sampling.driver import _view_fn
from physgen.sampling.guidance import GuidedNet

# One process per family, each with the views a guided sampler may use.
FAMILIES = {
    "edm": ("denoiser", "ode", "score"),
    "pfgmpp": ("denoiser", "ode"),
    "cfm": ("ode", "denoiser"),
    "ct": ("consistency",),
}
SAMPLERS = {"edm": "heun", "pfgmpp": "dpmpp_2m", "cfm": "euler", "ct": "consistency"}


def _net(seed: int = 0) -> nn.Module:
    """A conditional MLP with random (non-zero) output layer, so F_c ≠ F_u."""
    g = torch.Generator().manual_seed(seed)
    net = MLP(2, width=32, depth=2, emb_dim=16, num_classes=3)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net.eval()


def _time(kind: str, family: str) -> Tensor:
    """A time inside the view's domain: σ for σ-frame views, t for flow matching's ode."""
    return torch.tensor(0.6 if (family == "cfm" and kind == "ode") else 1.3, dtype=torch.float64)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cfg_endpoints_and_affine_in_every_view(family: str) -> None:
    """w = 0 is the unconditional model, w = 1 the conditional one, and guiding the network
    output guides each view by view_u + w (view_c − view_u): every view is affine in F."""
    process, net = get_process(family), _net()
    process.setup(net)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for kind in FAMILIES[family]:
        t = _time(kind, family)

        def fn(backbone: Any, cond: Tensor | None, kind: str = kind, t: Tensor = t) -> Tensor:
            view = process.view(kind, backbone, cond)
            return _view_fn(view, kind)(x, t)

        cond_out = fn(net, labels)
        uncond_out = fn(net, None)  # class_labels=None: the unconditional model
        assert not torch.allclose(cond_out, uncond_out)  # the test has something to detect
        for w in (0.0, 1.0, 3.0):
            guided = fn(GuidedNet(net, w), labels)
            expected = uncond_out + w * (cond_out - uncond_out)
            torch.testing.assert_close(guided, expected, atol=1e-5, rtol=1e-5)


def test_label_minus_one_is_unconditional() -> None:
    net = _net()
    x, label = torch.randn(4, 2), torch.full((4,), 0.1)
    torch.testing.assert_close(net(x, label, torch.full((4,), -1)), net(x, label, None))


def test_guidance_interval_switches_on_the_view_time() -> None:
    """Inside [lo, hi] the output is guided, outside it is conditional (w = 1)."""
    process, net = get_process("edm"), _net()
    x, labels = torch.randn(3, 2), torch.tensor([0, 1, 2])
    guided = GuidedNet(net, 4.0, interval=(0.5, 2.0))
    fn = guided.timed(process.view("denoiser", guided, labels).denoise)
    full = process.view("denoiser", GuidedNet(net, 4.0), labels).denoise
    cond = process.view("denoiser", net, labels).denoise
    for sigma, reference in ((1.0, full), (3.0, cond), (0.1, cond)):
        s = torch.tensor(sigma, dtype=torch.float64)
        torch.testing.assert_close(fn(x, s), reference(x, s), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_guided_sampling_runs(family: str) -> None:
    process, net = get_process(family), _net()
    process.setup(net)
    labels = torch.tensor([0, 1, 2, -1])
    out = sample(
        process, net, (2,), n=4, sampler=SAMPLERS[family], steps=4, cond=labels,
        guidance=2.5, guidance_interval=(0.0, 10.0),
    )  # fmt: skip
    assert out.x.shape == (4, 2) and torch.isfinite(out.x).all()
    assert out.guidance == {"scale": 2.5, "interval": [0.0, 10.0]}
    w0 = sample(process, net, (2,), n=4, sampler=SAMPLERS[family], steps=4, cond=labels, guidance=0)
    uncond = sample(process, net, (2,), n=4, sampler=SAMPLERS[family], steps=4)
    torch.testing.assert_close(w0.x, uncond.x, atol=1e-4, rtol=1e-4)


def test_guidance_without_labels_is_an_error() -> None:
    with pytest.raises(ConfigError, match="class labels"):
        sample(get_process("edm"), _net(), (2,), n=2, guidance=2.0)


# -- classifier guidance on an exact two-component mixture ---------------------------------

MEANS = torch.tensor([[-1.5, 0.0], [1.5, 0.0]], dtype=torch.float64)
STD = 0.3


def _mixture_denoiser(x: Tensor, sigma: Tensor) -> Tensor:
    """E[y | x] for p = ½N(μ_0, s²I) + ½N(μ_1, s²I) smoothed by N(0, σ²I), in closed form."""
    var = STD**2 + sigma[:, None] ** 2
    logits = -((x[:, None, :] - MEANS.to(x)) ** 2).sum(-1) / (2 * var)
    gamma = logits.softmax(1)
    post = MEANS.to(x)[None] + (STD**2 / var)[..., None] * (x[:, None, :] - MEANS.to(x)[None])
    return (gamma[..., None] * post).sum(1)


class OracleBackbone(nn.Module):
    """The F that makes EDM's preconditioned denoiser the exact mixture denoiser: EDM eq. 7
    inverted, ``F = (D(x; σ) − c_skip x)/c_out`` with σ = exp(4 c_noise), x = input/c_in."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, inp: Tensor, noise_label: Tensor, class_labels: Tensor | None = None):
        sigma = (4 * noise_label).exp()
        total = sigma**2 + 0.25
        x = inp * total.sqrt()[:, None]
        c_skip, c_out = 0.25 / total, sigma * 0.5 / total.sqrt()
        return (_mixture_denoiser(x, sigma) - c_skip[:, None] * x) / c_out[:, None]


def _posterior_logits(x: Tensor, sigma: Tensor) -> Tensor:
    """log p(k | x, σ) up to a constant: equal weights and stds, so −|x − μ_k|²/(2(s²+σ²))."""
    var = STD**2 + sigma[:, None] ** 2
    return -((x[:, None, :] - MEANS.to(x)) ** 2).sum(-1) / (2 * var)


def test_classifier_guidance_samples_the_chosen_component() -> None:
    """Unconditional exact score + ∇ log p(y | x, σ) = the score of p(x | y): samples land in
    component y with its mean and std (Dhariwal & Nichol 2021, scale 1)."""
    process = get_process("edm", sigma_max=20.0)
    n = 400
    labels = torch.tensor([0, 1]).repeat(n // 2)
    out = sample(
        process, OracleBackbone(), (2,), n=n, sampler="heun_churn", steps=40, cond=labels,
        classifier=_posterior_logits, dtype=torch.float64,
    )  # fmt: skip
    x = out.x
    for k in (0, 1):
        xk = x[labels == k]
        assert (xk[:, 0].sign() == (1 if k else -1)).float().mean() > 0.99
        assert (xk.mean(0) - MEANS[k]).abs().max() < 4 * STD / math.sqrt(n / 2) + 0.02
        assert abs(float(xk.std(0).mean()) - STD) < 0.05
    plain = sample(process, OracleBackbone(), (2,), n=n, sampler="heun_churn", steps=40,
                   dtype=torch.float64)  # fmt: skip
    assert 0.3 < float((plain.x[:, 0] > 0).float().mean()) < 0.7  # unguided: both components


def test_classifier_guidance_needs_a_score_view() -> None:
    with pytest.raises(ConfigError, match="score"):
        sample(
            get_process("pfgmpp"), _net(), (2,), n=2, sampler="dpmpp_2m",
            cond=torch.tensor([0, 1]), classifier=_posterior_logits,
        )  # fmt: skip


def test_cfg_endpoints_with_the_image_unet() -> None:
    """The same wrapper guides the U-Net backbone on 8×8 images (−1 = no label)."""
    from physgen.api import get_network

    net = get_network("unet", (1, 8, 8), num_classes=10, preset="tiny").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    view = get_process("edm").view
    x, labels, sigma = (
        torch.randn(3, 1, 8, 8, generator=g),
        torch.tensor([1, 4, 7]),
        torch.tensor(1.0),
    )
    cond = view("denoiser", net, labels).denoise(x, sigma)
    uncond = view("denoiser", net, None).denoise(x, sigma)
    assert not torch.allclose(cond, uncond)
    for w in (0.0, 1.0, 2.0):
        guided = view("denoiser", GuidedNet(net, w), labels).denoise(x, sigma)
        torch.testing.assert_close(guided, uncond + w * (cond - uncond), atol=1e-5, rtol=1e-5)


# -- autoguidance (Karras et al. 2024): a worse model of the same process guides ---------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_autoguidance_is_bad_plus_w_good_minus_bad_in_every_view(family: str) -> None:
    """D_w = D_bad + w (D_good − D_bad) in each view; w = 1 is the good model and w = 0 the
    bad one bitwise (one network evaluated), conditional or not."""
    process, good, bad = get_process(family), _net(0), _net(1)
    process.setup(good)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    for labels in (torch.tensor([0, 1, 2, 0, 1, 2]), None):
        for kind in FAMILIES[family]:
            t = _time(kind, family)

            def fn(backbone: Any, kind: str = kind, t: Tensor = t, c: Any = labels) -> Tensor:
                return _view_fn(process.view(kind, backbone, c), kind)(x, t)

            d_good, d_bad = fn(good), fn(bad)
            assert not torch.allclose(d_good, d_bad)
            assert torch.equal(fn(GuidedNet(good, 1.0, guide=bad)), d_good)
            assert torch.equal(fn(GuidedNet(bad, 0.0, guide=bad)), d_bad)
            assert torch.equal(fn(GuidedNet(good, 0.0, guide=bad)), d_bad)
            for w in (2.0, -0.5):
                expected = d_bad + w * (d_good - d_bad)
                torch.testing.assert_close(fn(GuidedNet(good, w, guide=bad)), expected,
                                           atol=1e-5, rtol=1e-5)  # fmt: skip


def test_autoguided_sampling_counts_both_networks() -> None:
    """Each guided call evaluates both networks: NFE doubles (heun, 4 steps: 7 → 14); at w = 1
    the samples are the good model's bitwise, at w = 0 the bad model's."""
    process, good, bad = get_process("edm"), _net(0), _net(1)
    plain = sample(process, good, (2,), n=8, steps=4)
    plain_bad = sample(process, bad, (2,), n=8, steps=4)
    guided = sample(process, good, (2,), n=8, steps=4, guide=bad, guidance=2.0)
    assert plain.nfe == 7 and guided.nfe == 14
    assert guided.guidance == {"scale": 2.0, "autoguidance": True}
    w1 = sample(process, good, (2,), n=8, steps=4, guide=bad, guidance=1.0)
    w0 = sample(process, good, (2,), n=8, steps=4, guide=bad, guidance=0.0)
    assert torch.equal(w1.x, plain.x) and w1.nfe == 7
    assert torch.equal(w0.x, plain_bad.x) and w0.nfe == 7
    labels = torch.arange(8) % 3  # conditional, no unconditional model needed
    out = sample(process, good, (2,), n=8, steps=4, guide=bad, guidance=2.0, cond=labels)
    assert out.nfe == 14 and torch.isfinite(out.x).all()


def _train_cli(out: Any, *extra: str) -> None:
    from click.testing import CliRunner

    from physgen.cli import cli

    args = ["train", "--steps", "3", "--n-data", "64", "--batch-size", "8", "--net-opt",
            "width=8", "--net-opt", "depth=1", "--device", "cpu", "-q",
            "--out", str(out)]  # fmt: skip
    r = CliRunner().invoke(cli, [*args, *extra])
    assert r.exit_code == 0, r.output


def test_guide_with_cli_end_to_end_and_refusals(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from physgen.cli import cli

    _train_cli(tmp_path / "good", "--class-cond", "-d", "8gaussians")
    _train_cli(tmp_path / "bad", "--class-cond", "-d", "8gaussians", "--net-opt", "width=4")
    _train_cli(tmp_path / "ve", "--class-cond", "-d", "8gaussians", "-p", "ve")
    _train_cli(tmp_path / "uncond", "-d", "8gaussians")
    good = str(tmp_path / "good" / "checkpoint.safetensors")
    base = ["sample", good, "-n", "16", "--steps", "3", "-q", "--device", "cpu",
            "--no-metrics", "--straightness", "0", "--overwrite"]  # fmt: skip
    out = tmp_path / "s.h5"
    guide = str(tmp_path / "bad" / "checkpoint.safetensors")
    r = CliRunner().invoke(
        cli, [*base, "--guide-with", guide, "--guidance", "2", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "NFE 10" in r.output  # heun on 3 steps: 5 evaluations, each of both networks
    import h5py

    with h5py.File(out) as f:
        assert f["samples/samples"].attrs["guide_with"] == guide
    for other, named in (("ve", "its process is 've', the model's is 'edm'"),
                         ("uncond", "its number of classes is 0")):  # fmt: skip
        path = str(tmp_path / other / "checkpoint.safetensors")
        r = CliRunner().invoke(cli, [*base, "--guide-with", path, "--out", str(out)])
        assert r.exit_code == 2 and named in r.output.strip().splitlines()[-1], r.output


def test_check_guide_names_the_first_difference() -> None:
    from types import SimpleNamespace

    from physgen.sampling.guidance import check_guide

    def ckpt(shape: tuple[int, ...], **options: Any) -> Any:
        meta = {"process": {"name": "edm", "options": options}}
        return SimpleNamespace(path="m.st", process_name="edm", meta=meta, event_shape=shape,
                               num_classes=0)  # fmt: skip

    check_guide(ckpt((2,)), ckpt((2,)))
    with pytest.raises(ConfigError, match=r"data shape is \(1, 8, 8\), the model's is \(2,\)"):
        check_guide(ckpt((2,)), ckpt((1, 8, 8)))
    with pytest.raises(ConfigError, match="process options"):
        check_guide(ckpt((2,)), ckpt((2,), sigma_data=1.0))
