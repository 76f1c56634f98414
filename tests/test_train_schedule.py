"""Learning-rate schedules (physgen.training.schedule) against their closed forms, the rate
the optimizer really used, and the logged scalars: the run file's curves and TensorBoard
(written when the package is installed; a one-line refusal when it is asked for and not)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from physgen.api import get_network, get_process
from physgen.cli import cli
from physgen.data import load_dataset
from physgen.errors import ConfigError
from physgen.training import TrainConfig, lr_at, train


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(**kw: Any) -> TrainConfig:
    return TrainConfig(**{"lr": 1e-2, "steps": 100, "batch_size": 8, **kw})


def test_constant_with_linear_warmup() -> None:
    cfg = _cfg(lr_warmup=10)
    assert [lr_at(k, cfg) for k in (0, 5, 10, 50)] == [0.0, 5e-3, 1e-2, 1e-2]
    assert lr_at(7, _cfg()) == 1e-2  # no warm-up: the configured rate, exactly


def test_cosine_reaches_zero_at_tref() -> None:
    cfg = _cfg(lr_schedule="cosine", lr_warmup=20, lr_tref=100)
    assert lr_at(10, cfg) == pytest.approx(5e-3)  # half-way through the warm-up
    assert lr_at(20, cfg) == pytest.approx(1e-2)
    assert lr_at(60, cfg) == pytest.approx(5e-3)  # half-way through the decay: cos(π/2)
    assert lr_at(40, cfg) == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(100, cfg) == pytest.approx(0.0, abs=1e-18) and lr_at(150, cfg) == lr_at(100, cfg)


def test_inverse_square_root_in_steps_and_images() -> None:
    cfg = _cfg(lr_schedule="inv_sqrt", lr_tref=25)
    assert [lr_at(k, cfg) for k in (0, 25)] == [1e-2, 1e-2]
    assert lr_at(100, cfg) == pytest.approx(5e-3)  # t = 4 t_ref: lr / 2 (EDM2 eq. 16)
    images = _cfg(lr_schedule="inv_sqrt", lr_tref=200, lr_unit="images", lr_warmup=80)
    assert lr_at(5, images) == pytest.approx(5e-3)  # 40 of 80 warm-up images
    assert lr_at(100, images) == pytest.approx(1e-2 / 2)  # 800 images = 4 t_ref


def _run(tmp_path: Path | None = None, **kw: Any) -> Any:
    process = get_process("edm")
    net = get_network("mlp", (2,), width=16, depth=1, seed=0)
    data = load_dataset("moons", 256, seed=0)
    args: dict[str, Any] = dict(steps=30, batch_size=32, lr=3e-3, progress=False, log_every=7)
    return train(process, net, data, **{**args, **kw})


def test_the_optimizer_uses_the_schedule_and_the_curves_are_kept(tmp_path: Path) -> None:
    result = _run(lr_schedule="cosine", lr_warmup=5, grad_clip=0.0)
    assert result.config.lr_tref == 30  # default: the run's length, recorded for resume
    expected = np.array([lr_at(k, result.config) for k in range(30)], np.float32)
    assert np.array_equal(result.lrs, expected) and result.lrs[0] == 0
    assert result.grad_norms.shape == (30,) and (result.grad_norms > 0).all()
    # a step at lr 0 leaves the weights as they were: Adam really read the schedule
    frozen = _run(steps=1, lr_warmup=5)
    fresh = get_network("mlp", (2,), width=16, depth=1, seed=0)
    for p, q in zip(frozen.net.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)


def test_resuming_with_more_steps_refuses_to_stretch_a_cosine(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.st"
    _run(steps=10, lr_schedule="cosine", checkpoint=ckpt)
    with pytest.raises(ConfigError, match="lr_tref=10, this run has 20"):
        _run(steps=20, lr_schedule="cosine", checkpoint=ckpt, resume=True)
    _run(steps=20, lr_schedule="cosine", lr_tref=10, checkpoint=ckpt, resume=True)


def test_run_file_has_the_scalar_curves(tmp_path: Path) -> None:
    args = ["train", "--steps", "12", "--n-data", "64", "--batch-size", "8", "--net-opt",
            "width=8", "--net-opt", "depth=1", "--device", "cpu", "-q", "--log-every", "5",
            "--lr-schedule", "inv_sqrt", "--lr-tref", "4",
            "--out", str(tmp_path / "r")]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "r" / "train.h5") as f:
        curves = f["metrics/curves"]
        assert curves["grad_norm"].shape == (12,) and curves["lr"].shape == (12,)
        np.testing.assert_allclose(curves["lr"][8], 2e-3 / math.sqrt(2), rtol=1e-6)
        rates = curves["steps_per_second"][:]
        assert (
            rates.shape == (3, 2) and list(rates[:, 0]) == [5, 10, 12] and (rates[:, 1] > 0).all()
        )


def test_tensorboard_not_installed_is_one_line(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match="tensorboard package is not installed"):
        _run(steps=2, tensorboard=str(tmp_path / "tb"))
    assert not (tmp_path / "tb").exists()
    args = ["train", "--steps", "2", "--n-data", "64", "--batch-size", "8", "--device", "cpu",
            "-q", "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "r")]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1].startswith("Error: tensorboard: the tensorboard")
    _run(steps=2)  # not asked for: nothing said, nothing imported


def test_tensorboard_gets_the_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _run(steps=14, tensorboard=str(tmp_path / "tb"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(14))
    np.testing.assert_allclose([e.value for e in loss], result.losses, rtol=1e-6)
    assert len(events.Scalars("train/lr")) == 14 and len(events.Scalars("train/grad_norm")) == 14
    assert [e.step for e in events.Scalars("train/steps_per_second")] == [6, 13]
