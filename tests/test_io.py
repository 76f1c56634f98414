"""Checkpoints, run files and atomic writes (physgen.io)."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import pickle
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from physgen.errors import CheckpointError, ConfigError
from physgen.io import (
    CHECKPOINT_FORMAT,
    RunWriter,
    atomic_write,
    load_checkpoint_file,
    read_run,
    restore_module,
    restore_optimizer,
    save_checkpoint,
)


def _trained_pair(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A small net and an Adam optimizer that has taken two steps (so it has state)."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(2):
        x = torch.randn(16, 3, generator=g)
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    return net, opt


def _save(path: Path, step: int = 7, **kw: object) -> tuple[nn.Module, torch.optim.Optimizer]:
    net, opt = _trained_pair()
    ema = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 3))
    args = dict(net=net, ema=ema, process=None, optimizer=opt, meta={"step": step})
    save_checkpoint(path, **{**args, **kw})  # type: ignore[arg-type]
    return net, opt


# -- checkpoints -------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    net, opt = _trained_pair()
    ema = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 3))
    state = torch.Generator().manual_seed(3).get_state()
    meta = {"step": 12, "process": {"name": "edm", "options": {"sigma_max": float("inf")}}}
    path = tmp_path / "ck.safetensors"
    save_checkpoint(
        path, net=net, ema=ema, process={"buf": torch.arange(3)}, optimizer=opt, meta=meta,
        rng_state={"data": state}, extra={"losses": torch.ones(12)},
    )  # fmt: skip
    raw = load_checkpoint_file(path)
    assert raw.step == 12 and raw.meta["format"] == CHECKPOINT_FORMAT
    assert raw.meta["process"]["options"]["sigma_max"] == float("inf")
    assert torch.equal(raw.rng["data"], state) and raw.rng["data"].dtype == torch.uint8
    assert torch.equal(raw.process["buf"], torch.arange(3))
    assert torch.equal(raw.extra["losses"], torch.ones(12))

    net2, opt2 = _trained_pair(seed=1)
    ema2 = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 3))
    restore_module(net2, raw, "net")
    restore_module(ema2, raw, "ema")
    restore_optimizer(opt2, raw)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]  # betas come back as a tuple
    assert s1["state"].keys() == s2["state"].keys()
    for k in s1["state"]:
        for name, value in s1["state"][k].items():
            assert torch.equal(value, s2["state"][k][name]), name


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"])
def test_checkpoint_whose_header_length_looks_like_a_pickle_or_zip(
    tmp_path: Path, first_bytes: bytes
) -> None:
    """The header length is little-endian: some lengths start with a pickle's or a zip's
    magic bytes. Grow the metadata until one does; the checkpoint must still load."""
    path = tmp_path / "ck.safetensors"
    _save(path, meta={"step": 7, "pad": ""})
    base = int.from_bytes(path.read_bytes()[:8], "little")
    modulus = 256 ** len(first_bytes)
    target = int.from_bytes(first_bytes, "little")
    pad = (target - base) % modulus  # one metadata character adds one header byte
    for extra in range(-8, 9):  # safetensors aligns the header; search the neighbourhood
        _save(path, meta={"step": 7, "pad": "x" * max(pad + extra, 0)})
        if path.read_bytes()[: len(first_bytes)] == first_bytes:
            break
    else:
        pytest.fail(f"no padding gave a header length starting with {first_bytes!r}")
    assert load_checkpoint_file(path).step == 7


def test_checkpoint_with_shared_storage(tmp_path: Path) -> None:
    """Tied weights (two keys, one storage) are stored; safetensors alone would refuse."""
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    net[1].weight = net[0].weight
    save_checkpoint(tmp_path / "t.st", net=net, ema=None, process=None, optimizer=None, meta={})
    raw = load_checkpoint_file(tmp_path / "t.st")
    assert torch.equal(raw.net["0.weight"], raw.net["1.weight"])


def test_restore_mismatch_is_one_line(tmp_path: Path) -> None:
    _save(tmp_path / "c.st")
    raw = load_checkpoint_file(tmp_path / "c.st")
    with pytest.raises(CheckpointError, match="do not fit") as info:
        restore_module(nn.Linear(3, 3), raw, "net")
    assert "\n" not in str(info.value)


class _Payload:
    """Unpickling this creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_pickle_payload_refused_and_not_executed(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    payload = {"net.weight": _Payload(marker)}
    if kind == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="refused without unpickling") as info:
        load_checkpoint_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [4, 20, -10])
def test_truncated_checkpoint(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "c.st"
    _save(path)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_checkpoint_file(path)
    assert str(path) in str(info.value)


def test_missing_foreign_and_future_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint_file(tmp_path / "nope.st")
    plain = tmp_path / "plain.st"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="without physgen metadata"):
        load_checkpoint_file(plain)
    future = tmp_path / "future.st"
    meta = {"physgen": json.dumps({"format": CHECKPOINT_FORMAT + 1})}
    safetensors.torch.save_file({"net.w": torch.zeros(2)}, str(future), metadata=meta)
    with pytest.raises(CheckpointError, match="format 2 is not supported"):
        load_checkpoint_file(future)
    text = tmp_path / "text.st"
    text.write_text("hello, this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_checkpoint_file(text)


def test_meta_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JSON"):
        _save(tmp_path / "c.st", meta={"step": 1, "bad": object()})
    assert list(tmp_path.iterdir()) == []


# -- atomic writes -----------------------------------------------------------------------


def test_atomic_write_keeps_old_file_when_writer_raises(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    atomic_write(path, lambda tmp: tmp.write_bytes(b"old"))

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def _slow_checkpoint(path: Path, writing: Any) -> None:
    """Child: save a checkpoint through a writer that stalls after every 64 KiB chunk."""
    import physgen.io.checkpoint as pio

    def slow(tensors: dict, metadata: dict, tmp: Path) -> None:
        data = safetensors.torch.save(tensors, metadata=metadata)
        with open(tmp, "wb") as f:
            for i in range(0, len(data), 1 << 16):
                f.write(data[i : i + (1 << 16)])
                f.flush()
                writing.set()
                time.sleep(0.5)

    pio._write_safetensors = slow
    net = nn.Linear(256, 256)
    save_checkpoint(path, net=net, ema=net, process=None, optimizer=None, meta={"step": 2})


def _slow_run(path: Path, writing: Any) -> None:
    """Child: open a run file over the existing one, write samples, then hang."""
    w = RunWriter(path, overwrite=True, seed=2)
    w.add_samples("new", np.ones((20000, 2)))
    writing.set()
    time.sleep(30)


def _kill_mid_write(target: Callable[[Path, Any], None], path: Path) -> None:
    """Run ``target(path, event)`` in a forked child; SIGKILL it once it sets the event."""
    ctx = mp.get_context("fork")
    writing = ctx.Event()
    child = ctx.Process(target=target, args=(path, writing))
    child.start()
    try:
        assert writing.wait(timeout=20), "child never started writing"
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        child.join(timeout=10)
    assert child.exitcode == -signal.SIGKILL


def test_kill_during_checkpoint_write_keeps_previous(tmp_path: Path) -> None:
    path = tmp_path / "ck.safetensors"
    _save(path, step=1)
    _kill_mid_write(_slow_checkpoint, path)
    assert load_checkpoint_file(path).step == 1
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".ck.safetensors.")
    assert 0 < leftovers[0].stat().st_size < 2 * 256 * 256 * 4  # killed mid-write


def test_kill_during_run_file_write_keeps_previous(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, seed=1) as w:
        w.add_samples("old", np.zeros((10, 2)))
    _kill_mid_write(_slow_run, path)
    run = read_run(path)
    assert list(run.samples) == ["old"] and run.attrs["seed"] == 1


# -- run files ---------------------------------------------------------------------------


def test_run_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    x = torch.randn(50, 2)
    config = {"process": "edm", "options": {"sigma_max": 80.0}, "steps": [1, 2]}
    with RunWriter(path, config=config, seed=3, device="cpu", command="physgen train") as w:
        w.add_samples(
            "heun-18", x, process="edm", sampler="heun", steps=18, nfe=35, seed=3,
            wall_seconds=0.5, options={"S_churn": 0.0},
        )  # fmt: skip
        w.add_metric("w2", 0.125)
        w.add_curve("loss", np.arange(5, dtype=np.float32))
        w.add_curve("nll", np.ones(3))
        assert not path.exists()  # built under a temporary name until close
    run = read_run(path)
    assert run.config == config
    assert run.attrs["seed"] == 3 and run.attrs["device"] == "cpu"
    assert run.attrs["command"] == "physgen train"
    assert {"physgen_version", "torch_version", "start_time", "end_time"} <= set(run.attrs)
    assert "git_commit" in run.attrs  # a hash, or None outside a git checkout
    samples, attrs = run.samples["heun-18"]
    assert samples.dtype == np.float32 and np.array_equal(samples, x.numpy())
    assert attrs["nfe"] == 35 and attrs["sampler"] == "heun"
    assert attrs["options"] == {"S_churn": 0.0}
    assert run.metrics == {"w2": 0.125}
    assert np.array_equal(run.loss, np.arange(5)) and np.array_equal(run.curves["nll"], np.ones(3))
    with h5py.File(path) as f:
        ds = f["samples/heun-18"]
        assert ds.compression == "gzip" and ds.chunks is not None


def test_run_file_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    RunWriter(path, seed=1).close()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        RunWriter(path)
    with RunWriter(path, seed=2, overwrite=True):
        pass
    assert read_run(path).attrs["seed"] == 2


def test_run_file_discarded_on_error(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with pytest.raises(RuntimeError), RunWriter(path) as w:
        w.add_metric("a", 1.0)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_read_run_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_run(tmp_path / "missing.h5")
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(CheckpointError, match="not an HDF5 file"):
        read_run(text)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(CheckpointError, match="not a physgen run file"):
        read_run(foreign)
    good = tmp_path / "good.h5"
    with RunWriter(good) as w:
        w.add_samples("s", np.random.default_rng(0).normal(size=(5000, 2)))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError) as info:
        read_run(cut)
    assert str(cut) in str(info.value) and "\n" not in str(info.value)


def test_run_file_records_when_the_work_started(tmp_path: Path) -> None:
    started = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    with RunWriter(tmp_path / "a.h5", started=started) as w:
        w.add_metric("m", 1.0)
    attrs = read_run(tmp_path / "a.h5").attrs
    assert attrs["start_time"] == "2024-05-06T07:08:09+00:00"
    assert attrs["end_time"] > attrs["start_time"]


def _cli(*args: str) -> None:
    from click.testing import CliRunner

    from physgen.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_cli_run_files_start_before_the_work_and_end_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``physgen train`` and ``physgen sample`` write their run file after the work: its
    ``start_time`` is when the command began, not when the file was opened."""
    import physgen.sampling
    import physgen.training

    def slow(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            time.sleep(1.1)  # the work spans a second boundary
            return out

        return wrapped

    monkeypatch.setattr(physgen.training, "train", slow(physgen.training.train))
    monkeypatch.setattr(physgen.sampling, "sample", slow(physgen.sampling.sample))
    out = tmp_path / "run"
    _cli(
        "train", "--steps", "2", "--n-data", "64", "--batch-size", "16", "--net-opt",
        "width=16", "--net-opt", "depth=1", "--device", "cpu", "-q", "--out", str(out),
    )  # fmt: skip
    _cli(
        "sample", str(out / "checkpoint.safetensors"), "-n", "8", "--steps", "2",
        "--no-metrics", "--straightness", "0", "--device", "cpu", "-q", "--out",
        str(out / "s.h5"),
    )  # fmt: skip
    for name in ("train.h5", "s.h5"):
        attrs = read_run(out / name).attrs
        assert attrs["start_time"] < attrs["end_time"], (name, attrs)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """Every atomic write (a checkpoint: safetensors creates 0600 files; a run file; a plain
    writer) gets the mode a new file gets under the umask, like every other output."""
    old = os.umask(umask)
    try:
        _save(tmp_path / "c.safetensors")
        with RunWriter(tmp_path / "r.h5"):
            pass
        atomic_write(tmp_path / "t.txt", lambda p: p.write_text("x"))
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert (os.stat(tmp_path / "plain").st_mode & 0o777) == expected
    for name in ("c.safetensors", "r.h5", "t.txt"):
        assert (os.stat(tmp_path / name).st_mode & 0o777) == expected, name
