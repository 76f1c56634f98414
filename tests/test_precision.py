"""Trainer precision and speed options: bf16 autocast, torch.compile, channels_last, and
label dropout for classifier-free guidance."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from physgen.api import get_network, get_process
from physgen.errors import ConfigError
from physgen.io import load_checkpoint_file
from physgen.training import train

OPTS: dict[str, Any] = dict(batch_size=32, lr=3e-3, progress=False, log_every=5)


def _data(n: int = 128) -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(3, (n,), generator=g)
    return SimpleNamespace(x=torch.randn(n, 2, generator=g), labels=labels, name="toy")


def _net(num_classes: int = 0) -> nn.Module:
    net = get_network("mlp", (2,), num_classes=num_classes, width=32, depth=2)
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    return net


@pytest.mark.slow
def test_bf16_trains_and_keeps_fp32_state(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    result = train(get_process("edm"), _net(), _data(), steps=10, precision="bf16",
                   checkpoint=path, **OPTS)  # fmt: skip
    assert np.isfinite(result.losses).all()
    assert all(p.dtype == torch.float32 for p in result.net.parameters())
    assert all(p.dtype == torch.float32 for p in result.ema.parameters())
    raw = load_checkpoint_file(path)
    assert all(t.dtype == torch.float32 for k, t in raw.optim.items() if "exp_avg" in k)
    # bf16 rounds (8-bit mantissa): the losses differ from fp32 but only at that level.
    fp32 = train(get_process("edm"), _net(), _data(), steps=10, **OPTS)
    assert not np.array_equal(result.losses, fp32.losses)
    np.testing.assert_allclose(result.losses[:5], fp32.losses[:5], rtol=0.05)


def _compile_works() -> bool:
    try:
        f = torch.compile(lambda x: x * 2, backend="aot_eager")
        return bool(f(torch.ones(2)).sum() == 4)
    except Exception:
        return False


@pytest.mark.slow
def test_compile_matches_eager_and_saves_plain_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's wiring of torch.compile: dynamo traces the loss's net calls (backend
    aot_eager here: inductor's C++ build takes minutes on a shared CPU and its numerics are
    torch's business), the losses match eager, and the checkpoint holds the plain module."""
    if not _compile_works():
        pytest.skip("torch.compile is not usable here")
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compile_(m, backend="aot_eager", **kw))
    path = tmp_path / "c.safetensors"
    eager = train(get_process("edm"), _net(), _data(), steps=5, **OPTS)
    compiled = train(get_process("edm"), _net(), _data(), steps=5, compile=True,
                     checkpoint=path, **OPTS)  # fmt: skip
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-4, atol=1e-6)
    keys = set(load_checkpoint_file(path).net)
    assert keys == set(_net().state_dict()) and not any("_orig_mod" in k for k in keys)


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(2, 1, 3, padding=1)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None) -> Tensor:
        label = noise_label.to(x.dtype)[:, None, None, None].expand(-1, 1, *x.shape[2:])
        return self.conv(torch.cat([x, label], 1))


def test_channels_last_same_losses_on_images() -> None:
    images = SimpleNamespace(x=torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0)))
    a = train(get_process("edm"), TinyConv(), images, steps=5, **OPTS)
    net = TinyConv()
    b = train(get_process("edm"), net, images, steps=5, channels_last=True, **OPTS)
    assert net.conv.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(b.losses, a.losses, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="channels_last"):
        train(get_process("edm"), _net(), _data(), steps=1, channels_last=True, **OPTS)


class Recorder(nn.Module):
    """Records the class labels it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 3
        self.lin = nn.Linear(2, 2)
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None) -> Tensor:
        assert class_labels is not None
        self.seen.append(class_labels.clone())
        return self.lin(x)


def test_label_dropout_rate_and_exact_resume(tmp_path: Path) -> None:
    net = Recorder()
    train(get_process("edm"), net, _data(), steps=50, label_dropout=0.3, **OPTS)
    labels = torch.cat(net.seen)
    frac = float((labels == -1).float().mean())
    assert abs(frac - 0.3) < 4 * (0.3 * 0.7 / len(labels)) ** 0.5  # binomial, 4σ
    assert set(labels.tolist()) <= {-1, 0, 1, 2}
    # resume stays bitwise with dropout (its draws come from the saved data generator)
    path = tmp_path / "c.safetensors"
    full = train(get_process("edm"), _net(3), _data(), steps=20, label_dropout=0.3, **OPTS)
    train(get_process("edm"), _net(3), _data(), steps=10, label_dropout=0.3, checkpoint=path,
          **OPTS)  # fmt: skip
    resumed = train(get_process("edm"), _net(3), _data(), steps=20, label_dropout=0.3,
                    checkpoint=path, resume=True, **OPTS)  # fmt: skip
    np.testing.assert_array_equal(resumed.losses, full.losses)
    with pytest.raises(ConfigError, match="label_dropout"):
        train(get_process("edm"), _net(0), _data(), steps=1, label_dropout=0.1, **OPTS)


@pytest.mark.parametrize("kw", [{"precision": "fp16"}, {"label_dropout": 1.0}, {"shards": 0}])
def test_invalid_options(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        train(get_process("edm"), _net(3), _data(), steps=1, **{**OPTS, **kw})
