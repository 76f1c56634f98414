"""The DDPM++ U-Net: presets, the published CIFAR-10 size, class labels, memory format,
precision and gradients.

Most checks randomise the weights first (``_randomised``): at init the residual branches and
the output conv are ≈ 1e-5 (DDPM++'s near-zero init), so an untrained net's output is too
small for "changes the output" to mean anything.
"""

from __future__ import annotations

import math

import pytest
import torch

from physgen.api import get_network
from physgen.errors import ConfigError
from physgen.nets.unet import PRESETS, UNet

#: EDM (Karras et al. 2022) Table 7, DDPM++ on CIFAR-10 (unconditional): 55.73M parameters.
PUBLISHED_CIFAR10 = 55.73e6


def _randomised(net: UNet, seed: int = 0) -> UNet:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim > 1 else 0.05))
    return net.eval()


def _tiny(num_classes: int = 0, shape: tuple[int, ...] = (1, 8, 8)) -> UNet:
    net = get_network("unet", shape, num_classes, preset="tiny")
    assert isinstance(net, UNet)
    return net


def _inputs(b: int = 3, shape: tuple[int, ...] = (1, 8, 8), seed: int = 1):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *shape, generator=g), torch.rand(b, generator=g) * 2 - 1


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16), (2, 8, 16)])
def test_shape_dtype_device(preset: str, shape: tuple[int, ...]) -> None:
    net = get_network("unet", shape, 0, preset=preset)
    x, sigma = _inputs(2, shape)
    y = net(x, sigma)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all()
    # The output starts near zero (EDM's 1e-5 init of the last conv), as the MLP's does.
    assert y.abs().max() < 1e-3
    y64 = net.double()(x.double(), sigma.double())
    assert y64.dtype == torch.float64 and y64.shape == x.shape


def test_preset_sizes() -> None:
    counts = {
        p: sum(q.numel() for q in get_network("unet", (1, 8, 8), 0, preset=p).parameters())
        for p in ("tiny", "small")
    }
    assert 10_000 < counts["tiny"] < 100_000  # CPU test size
    assert counts["tiny"] < counts["small"] < 2_000_000


def test_cifar10_matches_the_published_size() -> None:
    """EDM's DDPM++ for 32×32 RGB has 55.73M parameters; ours is within 1% of that, and
    a forward pass at batch 1 gives a finite output of the input's shape."""
    net = get_network("unet", (3, 32, 32), 0, preset="cifar10")
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - PUBLISHED_CIFAR10) / PUBLISHED_CIFAR10 < 0.01, count
    with torch.no_grad():
        y = net.eval()(torch.randn(1, 3, 32, 32), torch.tensor([0.3]))
    assert y.shape == (1, 3, 32, 32) and torch.isfinite(y).all()


def test_class_labels_and_the_no_label_value() -> None:
    net = _randomised(_tiny(num_classes=3))
    x, sigma = _inputs()
    with torch.no_grad():
        uncond = net(x, sigma)
        assert torch.equal(net(x, sigma, torch.full((3,), -1)), uncond)
        cond = net(x, sigma, torch.tensor([0, 1, 2]))
        # Every label moves every row (float32 rounding is ~1e-7 here).
        assert (cond - uncond).flatten(1).norm(dim=1).min() > 1e-5
        # Label -1 in a mixed batch: that row is the unconditional output.
        mixed = net(x, sigma, torch.tensor([-1, 1, -1]))
    torch.testing.assert_close(mixed[[0, 2]], uncond[[0, 2]])
    torch.testing.assert_close(mixed[1], cond[1])
    # An unconditional net ignores labels.
    plain = _randomised(_tiny())
    with torch.no_grad():
        assert torch.equal(plain(x, sigma, torch.tensor([0, 1, 2])), plain(x, sigma))


def test_noise_label_and_rows_are_independent() -> None:
    """The noise label changes the output; row i does not depend on the rest of the batch
    (GroupNorm normalises per example; eval mode)."""
    net = _randomised(_tiny(shape=(3, 16, 16)))
    x, sigma = _inputs(4, (3, 16, 16))
    with torch.no_grad():
        y = net(x, sigma)
        y_other = net(x, sigma + 1.0)
        alone = torch.cat([net(x[i : i + 1], sigma[i : i + 1]) for i in range(4)])
    assert (y - y_other).abs().max() > 1e-3
    torch.testing.assert_close(alone, y, rtol=1e-5, atol=1e-5)


def test_channels_last_equals_contiguous() -> None:
    net = _randomised(_tiny(num_classes=2, shape=(3, 16, 16)))
    x, sigma = _inputs(2, (3, 16, 16))
    labels = torch.tensor([1, -1])
    with torch.no_grad():
        ref = net(x, sigma, labels)
        net_cl = net.to(memory_format=torch.channels_last)
        y = net_cl(x.to(memory_format=torch.channels_last), sigma, labels)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_keeps_the_input_dtype() -> None:
    net = _randomised(_tiny(shape=(3, 16, 16)))
    x, sigma = _inputs(2, (3, 16, 16))
    with torch.no_grad():
        ref = net(x, sigma)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x, sigma)
    assert y.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: a few percent of the output's scale.
    assert (y - ref).abs().max() < 0.05 * ref.abs().max()


def test_gradient_reaches_every_parameter() -> None:
    net = _tiny(num_classes=3).train()
    x, sigma = _inputs(6)
    labels = torch.tensor([0, 1, 2, -1, 0, 1])
    loss = (net(x, sigma, labels) - x).square().sum()
    loss.backward()
    missing = [
        name
        for name, p in net.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert not missing, missing


def test_config_errors_are_one_line() -> None:
    cases = [
        ((1, 6, 6), {"preset": "small"}),  # 6 not divisible by 4 (3 levels)
        ((1, 8, 8), {"preset": "huge"}),
        ((1, 8, 8), {"channel_mult": "1,x"}),
        ((1, 8, 8), {"embedding": "sinc"}),
        ((64,), {}),
    ]
    for shape, config in cases:
        with pytest.raises(ConfigError) as err:
            get_network("unet", shape, 0, **config)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"looks like \[H, W, C\]"):
        get_network("unet", (32, 32, 3))  # an NHWC array
    with pytest.raises(ConfigError, match="vector data"):
        get_network("mlp", (1, 8, 8))


def test_string_overrides_and_presets() -> None:
    """``--net-opt`` strings override a preset; the rest keeps the preset's values."""
    net = get_network(
        "unet",
        (1, 8, 8),
        0,
        preset="tiny",
        channel_mult="1,2,2",
        attn_resolutions="",
        dropout="0.1",
    )
    assert isinstance(net, UNet)
    tiny = PRESETS["tiny"]
    assert net.conv_in.out_channels == tiny["model_channels"]
    down = [b for b in net.enc if getattr(b, "resample", "") == "down"]
    assert len(down) == 2  # three levels
    assert not any(b.attention for b in net.enc)
    assert math.isclose(net.enc[0].dropout, 0.1)
    fourier = get_network("unet", (1, 8, 8), 0, preset="tiny", embedding="fourier")
    x, sigma = _inputs(2)
    assert fourier(x, sigma).shape == x.shape
