"""The training loop (physgen.training): learning, exact resume, failure and interrupt paths."""

from __future__ import annotations

import copy
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from physgen.core.process import Process
from physgen.errors import CheckpointError, ConfigError, TrainingError
from physgen.io import load_checkpoint_file
from physgen.training import TrainingInterrupted, describe, train


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny nets on a shared CPU: intra-op threads only add contention (15× slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class DenoiseOptions:
    sigma: float = 0.5  # fixed noise level


class Denoise(Process):
    """A one-σ denoising loss ``|F(y + σn, σ) − y|²`` with process state, as a consistency
    process has: a target copy of the net made in ``setup`` and an EMA of it in
    ``after_step``, and a step counter that damps the loss, so resume must restore both."""

    Options = DenoiseOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.target: nn.Module | None = None

    def setup(self, net: nn.Module) -> None:
        if self.target is None:
            self.target = copy.deepcopy(net).requires_grad_(False)

    def loss(
        self,
        net: Any,
        y: Tensor,
        *,
        cond: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        sigma = self.options.sigma
        n = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        label = torch.full((y.shape[0],), sigma, device=y.device)
        err = (net(y + sigma * n, label, cond) - y).pow(2).flatten(1).mean(1)
        return err / (1 + 1e-3 * self.count.float())

    def after_step(self, net: nn.Module, step: int) -> None:
        self.count += 1
        assert self.target is not None, "setup was not called"
        with torch.no_grad():
            for t, p in zip(self.target.parameters(), net.parameters(), strict=True):
                t.lerp_(p, 0.1)


class Tiny(nn.Module):
    """A raw backbone ``F(x, noise_label, class_labels=None)``."""

    def __init__(self, dim: int = 2, hidden: int = 32, num_classes: int = 0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)  # test-only: deterministic init
        self.num_classes = num_classes
        self.inp = nn.Linear(dim + 1, hidden)
        self.out = nn.Linear(hidden, dim)
        self.emb = nn.Embedding(num_classes, hidden) if num_classes else None
        self.seen_labels = False

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None) -> Tensor:
        h = self.inp(torch.cat([x, noise_label[:, None]], 1))
        if self.emb is not None and class_labels is not None:
            self.seen_labels = True
            h = h + self.emb(class_labels)
        return self.out(torch.nn.functional.silu(h))


def _data(n: int = 256, num_classes: int = 3) -> SimpleNamespace:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(num_classes, (n,), generator=g)
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    x = centers[labels] + 0.1 * torch.randn(n, 2, generator=g)
    return SimpleNamespace(x=x, labels=labels, num_classes=num_classes, name="toy")


def _run(**kw: Any) -> Any:
    args: dict[str, Any] = dict(steps=40, batch_size=32, lr=3e-3, progress=False, log_every=7)
    args.update(kw)
    net = args.pop("net", None) or Tiny(num_classes=3)
    return train(args.pop("process", None) or Denoise(), net, _data(), **args)


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_training_reduces_the_loss() -> None:
    result = _run(steps=200, ema_decay=0.9)
    assert result.losses.shape == (200,) and result.losses.dtype == np.float32
    assert result.losses[-20:].mean() < 0.5 * result.losses[:20].mean()
    assert result.net.seen_labels  # conditional net got the labels
    assert not any(p.requires_grad for p in result.ema.parameters())
    assert result.steps == 200 and result.checkpoint is None


def test_unconditional_net_gets_no_labels() -> None:
    result = _run(steps=5, net=Tiny(num_classes=0))
    assert not result.net.seen_labels


def test_resume_is_bitwise_exact(tmp_path: Path) -> None:
    straight_process = Denoise()
    straight = _run(
        steps=40, checkpoint=tmp_path / "a.st", checkpoint_every=None, process=straight_process
    )
    first = _run(steps=20, checkpoint=tmp_path / "b.st", checkpoint_every=None)
    assert load_checkpoint_file(tmp_path / "b.st").step == 20
    process = Denoise()
    resumed = _run(steps=40, checkpoint=tmp_path / "b.st", resume=True, process=process)
    assert np.array_equal(first.losses, straight.losses[:20])
    assert np.array_equal(resumed.losses, straight.losses)
    _assert_same_weights(resumed.net, straight.net)
    _assert_same_weights(resumed.ema, straight.ema)
    assert process.count.item() == 40
    assert straight_process.target is not None and process.target is not None
    _assert_same_weights(process.target, straight_process.target)
    raw = load_checkpoint_file(tmp_path / "b.st")
    assert raw.step == 40 and np.array_equal(raw.extra["losses"].numpy(), straight.losses)


def test_checkpoint_records_meta(tmp_path: Path) -> None:
    meta = {"network": {"name": "tiny", "config": {"hidden": 32}}, "dataset": {"name": "gmm"}}
    _run(steps=3, checkpoint=tmp_path / "c.st", meta=meta, seed=5)
    m = load_checkpoint_file(tmp_path / "c.st").meta
    assert m["process"] == {"name": "Denoise", "options": {"sigma": 0.5}}
    assert {"count", "target.inp.weight"} <= set(load_checkpoint_file(tmp_path / "c.st").process)
    assert m["network"] == {"name": "tiny", "config": {"hidden": 32}, "num_classes": 3}
    assert m["dataset"] == {
        "name": "gmm",
        "size": 256,
        "event_shape": [2],
        "num_classes": 3,
        "info": {},
    }
    assert m["train"]["seed"] == 5 and m["train"]["batch_size"] == 32 and m["step"] == 3
    assert m["optimizer"]["param_groups"][0]["lr"] == 3e-3


def test_describe_uses_registry_names() -> None:
    process, net = Denoise(sigma=0.25), Tiny(num_classes=3)
    process.registry_name = "denoise"  # as physgen.api.get_process tags it
    net.registry_name, net.registry_config = "tiny", {"hidden": 32}  # type: ignore[assignment]
    meta = describe(process, net, _data())
    assert meta["process"] == {"name": "denoise", "options": {"sigma": 0.25}}
    assert meta["network"] == {"name": "tiny", "config": {"hidden": 32}, "num_classes": 3}
    assert meta["dataset"]["event_shape"] == [2] and meta["dataset"]["num_classes"] == 3


class NaNAt(Denoise):
    """Returns a NaN loss from step ``bad`` on."""

    def __init__(self, bad: int):
        super().__init__()
        self.bad = bad

    def loss(self, net: Any, y: Tensor, *, step: int = 0, **kw: Any) -> Tensor:
        out = super().loss(net, y, step=step, **kw)
        return out * float("nan") if step >= self.bad else out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "c.st"
    with pytest.raises(TrainingError, match="non-finite loss nan at step 33") as info:
        _run(steps=60, process=NaNAt(33), checkpoint=path, checkpoint_every=10)
    assert "\n" not in str(info.value)
    raw = load_checkpoint_file(path)
    assert raw.step == 30 and np.isfinite(raw.extra["losses"].numpy()).all()


class InterruptAt(Denoise):
    """Raises KeyboardInterrupt inside the loss at step ``at`` (or sends SIGINT)."""

    def __init__(self, at: int, *, signal: bool = False):
        super().__init__()
        self.at, self.signal = at, signal
        self.registry_name = "Denoise"  # the same run as Denoise's, with a fault injected

    def loss(self, net: Any, y: Tensor, *, step: int = 0, **kw: Any) -> Tensor:
        if step == self.at:
            if not self.signal:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
        return super().loss(net, y, step=step, **kw)


def test_keyboard_interrupt_inside_a_step_keeps_the_last_clean_checkpoint(tmp_path: Path) -> None:
    """A KeyboardInterrupt that lands inside step 17 (no deferring handler: raised by the loss
    itself) must not save the half-updated state as step 17: the checkpoint of step 15 stays,
    and resuming from it reproduces the uninterrupted run bitwise."""
    straight = _run(steps=40)
    path = tmp_path / "c.st"
    with pytest.raises(TrainingInterrupted) as stop:
        _run(steps=40, process=InterruptAt(17), checkpoint=path, checkpoint_every=5)
    assert (stop.value.step, stop.value.checkpoint) == (15, path)
    raw = load_checkpoint_file(path)
    assert raw.step == 15 and raw.extra["losses"].shape == (15,)
    resumed = _run(steps=40, checkpoint=path, resume=True, checkpoint_every=5)
    assert np.array_equal(resumed.losses, straight.losses)
    _assert_same_weights(resumed.net, straight.net)


def test_sigint_stops_at_a_step_boundary_and_resumes_exactly(tmp_path: Path) -> None:
    """Ctrl-C is deferred to the end of the step, so the checkpoint resumes bitwise."""
    straight = _run(steps=40)
    path = tmp_path / "c.st"
    with pytest.raises(KeyboardInterrupt):
        _run(steps=40, process=InterruptAt(12, signal=True), checkpoint=path)
    assert load_checkpoint_file(path).step == 13
    resumed = _run(steps=40, checkpoint=path, resume=True)
    assert np.array_equal(resumed.losses, straight.losses)
    _assert_same_weights(resumed.net, straight.net)


def test_resume_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a checkpoint"):
        _run(resume=True)
    with pytest.raises(CheckpointError, match="not found"):
        _run(resume=True, checkpoint=tmp_path / "missing.st")
    _run(steps=4, checkpoint=tmp_path / "c.st")
    with pytest.raises(ConfigError, match="trained with batch_size=32, this run has 16"):
        _run(steps=8, batch_size=16, checkpoint=tmp_path / "c.st", resume=True)
    done = _run(steps=4, checkpoint=tmp_path / "c.st", resume=True)  # already there
    assert done.losses.shape == (4,) and done.checkpoint == tmp_path / "c.st"


@pytest.mark.parametrize(
    "kw",
    [{"steps": 0}, {"batch_size": 0}, {"lr": 0.0}, {"ema_decay": 1.5}, {"grad_clip": -1.0}],
)
def test_invalid_options(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        _run(**kw)


def test_progress_bar_shows_loss(capsys: pytest.CaptureFixture[str]) -> None:
    _run(steps=10, progress=True, log_every=5)
    err = capsys.readouterr().err
    assert "loss=" in err and "step/s" in err


def test_get_network_is_seeded_and_leaves_the_global_rng_alone() -> None:
    """Two calls with the same seed give the same initial weights, whatever the global RNG
    holds, and leave it untouched; another seed gives another network."""
    from physgen.api import get_network

    torch.manual_seed(11)
    before = torch.get_rng_state()
    a = get_network("mlp", (2,), width=16, depth=1)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(12)
    b = get_network("mlp", (2,), width=16, depth=1)
    c = get_network("mlp", (2,), width=16, depth=1, seed=1)
    _assert_same_weights(a, b)
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters(), strict=True))
    with pytest.raises(ConfigError, match="seed must be an integer"):
        get_network("mlp", (2,), seed=-1)


def test_existing_checkpoint_is_refused_without_resume_or_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "c.st"
    _run(steps=2, checkpoint=path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        _run(steps=2, checkpoint=path)
    assert path.read_bytes() == before
    _run(steps=3, checkpoint=path, overwrite=True)
    assert load_checkpoint_file(path).step == 3
