"""Fault injection with real processes: ``kill -9`` mid-checkpoint, mid-HDF5-write and
mid-training, and pickle payloads posing as checkpoints or data.

Each kill lands at a chosen point: the child (a script written to ``tmp_path``) wraps the
writer so that, at that point, it prints ``ready`` on its stdout (a pipe) and sleeps; the parent
reads the line and sends SIGKILL. The previous file must then be bitwise what it was, and the
temporary file the killed writer leaves must never be taken for the real one.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

import physgen
from physgen.errors import CheckpointError, DataError
from physgen.io import RunWriter, load_checkpoint_file, read_run, save_checkpoint

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and fork are POSIX")

#: prepended to every child script: a ``ready()`` that hands control to the parent's SIGKILL
CHILD_PRELUDE = """
import os, sys, time
os.environ["OMP_NUM_THREADS"] = "1"

def ready():
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    time.sleep(120)  # the parent kills us here
    sys.exit(3)
"""


def kill_when_ready(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` (after :data:`CHILD_PRELUDE`) as a script; SIGKILL it when it says ready."""
    script = tmp_path / "child.py"
    script.write_text(CHILD_PRELUDE + textwrap.dedent(body))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        readable, _, _ = select.select([child.stdout], [], [], 120)
        line = child.stdout.readline() if readable else ""
        assert line == "ready\n", (line, child.poll(), child.stderr and child.stderr.read())
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, (child.returncode, err)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def temp_files(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


# -- checkpoints -------------------------------------------------------------------------------


def _save(path: Path, step: int, seed: int) -> None:
    net = nn.Linear(64, 64)
    with torch.no_grad():
        net.weight.copy_(torch.randn(64, 64, generator=torch.Generator().manual_seed(seed)))
    save_checkpoint(path, net=net, ema=net, process=None, optimizer=None, meta={"step": step})


CHECKPOINT_CHILD = """
import torch
from torch import nn
import physgen.io.atomic as atomic
import physgen.io.checkpoint as ck
from physgen.io import save_checkpoint

where = sys.argv[2]
if where == "data":  # half the bytes written to the temporary file
    def half_then_die(tensors, metadata, tmp):
        data = safetensors_save(tensors, metadata=metadata)
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        ready()
    from safetensors.torch import save as safetensors_save
    ck._write_safetensors = half_then_die
else:  # complete temporary file, killed in fsync before the rename
    real_fsync = os.fsync
    def fsync_then_die(fd):
        real_fsync(fd)
        ready()
    atomic.os.fsync = fsync_then_die
net = nn.Linear(64, 64)
save_checkpoint(sys.argv[1], net=net, ema=net, process=None, optimizer=None, meta={"step": 99})
sys.exit(4)  # not reached
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["data", "fsync"])
def test_kill_mid_checkpoint_keeps_previous_bitwise(tmp_path: Path, where: str) -> None:
    path = tmp_path / "ck.safetensors"
    _save(path, step=1, seed=1)
    before = path.read_bytes()
    kill_when_ready(tmp_path, CHECKPOINT_CHILD, str(path), where)
    assert path.read_bytes() == before
    assert load_checkpoint_file(path).step == 1
    stale = temp_files(tmp_path, path.name)
    assert len(stale) == 1 and stale[0].stat().st_size > 0  # what the killed writer left
    # the stale file is hidden and does not look like a checkpoint to a glob or a loader
    assert list(tmp_path.glob("*.safetensors")) == [path]
    # the next successful write publishes the new file and removes the dead writer's temp
    _save(path, step=2, seed=2)
    assert load_checkpoint_file(path).step == 2
    assert temp_files(tmp_path, path.name) == []


def test_stale_temp_of_a_live_writer_is_kept(tmp_path: Path) -> None:
    """Only a dead writer's temporary file is removed: a concurrent one is left alone."""
    path = tmp_path / "ck.safetensors"
    live = tmp_path / f".{path.name}.{os.getppid()}-abcd1234.tmp"
    live.write_bytes(b"someone else is writing this")
    _save(path, step=1, seed=1)
    assert live.exists()


# -- HDF5 run files ---------------------------------------------------------------------------

RUN_CHILD = """
import numpy as np
import physgen.io.atomic as atomic
from physgen.io import RunWriter

where = sys.argv[2]
if where == "fsync":  # the HDF5 file is closed and complete; killed before the rename
    real_fsync = os.fsync
    def fsync_then_die(fd):
        real_fsync(fd)
        ready()
    atomic.os.fsync = fsync_then_die
w = RunWriter(sys.argv[1], overwrite=True, seed=2, config={"new": True})
w.add_samples("new", np.ones((50_000, 2)))
w.add_curve("loss", np.arange(1000.0))
if where == "open":  # HDF5 file open, half written (not closed)
    w.file.flush()
    ready()
w.close()
sys.exit(4)  # not reached
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["open", "fsync"])
def test_kill_mid_run_file_keeps_previous_bitwise(tmp_path: Path, where: str) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, seed=1, config={"old": True}) as w:
        w.add_samples("old", np.arange(20.0).reshape(10, 2))
    before = path.read_bytes()
    kill_when_ready(tmp_path, RUN_CHILD, str(path), where)
    assert path.read_bytes() == before
    run = read_run(path)
    assert run.config == {"old": True} and list(run.samples) == ["old"]
    assert np.array_equal(run.samples["old"][0], np.arange(20.0).reshape(10, 2))
    stale = temp_files(tmp_path, path.name)
    assert len(stale) == 1 and list(tmp_path.glob("*.h5")) == [path]
    with RunWriter(path, seed=3, overwrite=True):
        pass
    assert read_run(path).attrs["seed"] == 3 and temp_files(tmp_path, path.name) == []


# -- training: kill -9, then --resume equals an uninterrupted run bitwise ---------------------

TRAIN_ARGS = (
    "train", "--steps", "12", "--checkpoint-every", "4", "--n-data", "256",
    "--batch-size", "32", "--net-opt", "width=16", "--net-opt", "depth=1",
    "--ema-decay", "0.9", "--device", "cpu", "-q",
)  # fmt: skip

TRAIN_CHILD = """
import physgen.io.checkpoint as ck
import physgen.training.state as training
from physgen.cli import main

kill_at = int(sys.argv[1])
real_save = training.save_checkpoint
if sys.argv[2] == "after":  # killed right after the checkpoint of step kill_at is on disk
    def save(path, **kw):
        out = real_save(path, **kw)
        if kw["meta"]["step"] == kill_at:
            ready()
        return out
else:  # killed half-way through writing the checkpoint of step kill_at
    real_write = ck._write_safetensors
    def save(path, **kw):
        if kw["meta"]["step"] == kill_at:
            def half_then_die(tensors, metadata, tmp):
                real_write(tensors, metadata, tmp)
                os.truncate(tmp, os.path.getsize(tmp) // 2)
                ready()
            ck._write_safetensors = half_then_die
        return real_save(path, **kw)
training.save_checkpoint = save
sys.argv = ["physgen", *sys.argv[3:]]
main()
"""


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "physgen.cli", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted ``physgen train`` run: the reference for the resumed ones."""
    out = tmp_path_factory.mktemp("straight") / "run"
    r = _cli(out.parent, *TRAIN_ARGS, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
@pytest.mark.parametrize("when", ["after", "during"])
def test_kill_9_during_training_then_resume_is_bitwise(
    tmp_path: Path, straight_run: Path, when: str
) -> None:
    killed = tmp_path / "killed"
    # "after": the step-8 checkpoint is complete; "during": the step-8 write is cut, so the
    # step-4 checkpoint must survive and be the one resumed from
    kill_when_ready(tmp_path, TRAIN_CHILD, "8", when, *TRAIN_ARGS, "--out", str(killed))
    ckpt = killed / "checkpoint.safetensors"
    assert load_checkpoint_file(ckpt).step == (8 if when == "after" else 4)
    assert not (killed / "train.h5").exists()  # the run file is only written at the end
    r = _cli(tmp_path, *TRAIN_ARGS, "--out", str(killed), "--resume")
    assert r.returncode == 0, r.stderr
    assert temp_files(killed, ckpt.name) == []  # the killed write's temp is cleaned up
    a, b = _tensors(straight_run / "checkpoint.safetensors"), _tensors(ckpt)
    assert a.keys() == b.keys()
    assert {"net", "ema", "optim", "rng", "extra"} <= {k.split(".")[0] for k in a}
    for key in a:  # weights, EMA, optimizer moments, generator states and the loss curve
        assert torch.equal(a[key], b[key]), key
    loss_a = read_run(straight_run / "train.h5").loss
    loss_b = read_run(killed / "train.h5").loss
    assert loss_a is not None and loss_a.shape == (12,) and np.array_equal(loss_a, loss_b)


# -- Ctrl-C: one or two SIGINTs inside a step, then --resume equals the straight run ----------

SIGINT_CHILD = """
import physgen.training.loop as loop
from physgen.cli import main

calls, stop_at = [0], int(sys.argv[1])
real_ema = loop.ema_update
def ema_update(*args):  # called mid-step: after Adam has updated the weights, before the EMA
    calls[0] += 1
    if calls[0] == stop_at:
        sys.stdout.write("ready\\n")
        sys.stdout.flush()
        while not os.path.exists("go"):  # the parent sends its SIGINTs, then creates "go"
            time.sleep(0.01)
    return real_ema(*args)
loop.ema_update = ema_update
sys.argv = ["physgen", *sys.argv[2:]]
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2])
def test_sigint_inside_a_step_exits_130_and_resumes_bitwise(
    tmp_path: Path, straight_run: Path, signals: int
) -> None:
    """Ctrl-C (once, or twice: the second used to abort the step and save its half-updated
    weights, Adam state and generators as the previous step) while step 6 is in flight: the
    step finishes, its checkpoint is saved as step 6, the command exits 130 with one line, and
    --resume reproduces the uninterrupted run bitwise."""
    out = tmp_path / "run"
    script = tmp_path / "child.py"
    script.write_text(CHILD_PRELUDE + textwrap.dedent(SIGINT_CHILD))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, str(script), "6", *TRAIN_ARGS, "--out", str(out)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        readable, _, _ = select.select([child.stdout], [], [], 120)
        assert readable and child.stdout.readline() == "ready\n", child.poll()
        for _ in range(signals):
            child.send_signal(signal.SIGINT)
            time.sleep(0.2)  # each is handled (by the main thread) before the next
        (tmp_path / "go").touch()
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert err.strip() == "interrupted at step 6; checkpoint saved, resume with --resume", err
    ckpt = out / "checkpoint.safetensors"
    assert load_checkpoint_file(ckpt).step == 6
    r = _cli(tmp_path, *TRAIN_ARGS, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    a, b = _tensors(straight_run / "checkpoint.safetensors"), _tensors(ckpt)
    for key in a:  # weights, EMA, optimizer moments, generator states and the loss curve
        assert torch.equal(a[key], b[key]), key


# -- pickles are refused, never executed -------------------------------------------------------


class _Payload:
    """Unpickling this creates the marker file (as an attacker's ``os.system`` would run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _write_pickle(path: Path, marker: Path, how: str) -> None:
    payload = {"net.weight": _Payload(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2 if how == "pickle2" else 5))


@pytest.mark.parametrize("how", ["torch.save", "pickle2", "pickle5"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".ckpt"])
def test_pickle_checkpoint_refused_by_the_library(tmp_path: Path, how: str, suffix: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / f"model{suffix}"
    _write_pickle(path, marker, how)
    for load in (load_checkpoint_file, physgen.load_checkpoint):
        with pytest.raises(CheckpointError, match="refused without unpickling") as info:
            load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def _npy_bytes(marker: Path) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([[_Payload(marker)]], dtype=object), allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".h5"])
def test_pickle_data_file_refused(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / f"data{suffix}"
    if suffix == ".npy":
        path.write_bytes(_npy_bytes(marker))
        fragment = "pickled Python objects"
    elif suffix == ".npz":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x.npy", _npy_bytes(marker))
        fragment = "pickled Python objects"
    else:  # a pickle renamed .h5: not HDF5 at all
        path.write_bytes(pickle.dumps(np.array([[_Payload(marker)]], dtype=object)))
        fragment = "not a readable HDF5 file"
    assert not marker.exists()  # writing the payload did not trigger it
    with pytest.raises(DataError, match=fragment) as info:
        physgen.load_dataset(str(path), 10)
    assert "\n" not in str(info.value)
    assert not marker.exists()
