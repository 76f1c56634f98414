"""Faults, hostile files and concurrency (issue 17): every command either exits 0 with correct
output, or prints one line and exits non-zero; never a traceback, never a lost or changed
pre-existing file.

File-system faults use real tmpfs mounts (a 64 KiB one for a full disk, a read-only one)
where this machine lets us mount (root in a container usually may); root bypasses permission
bits, so chmod is not a test of anything there. Signals and concurrent commands run real
``physgen`` processes. Everything else runs in-process through click's runner.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import physgen
from physgen.cli import cli
from physgen.errors import CheckpointError, ConfigError, PhysgenError, WriteError
from physgen.io import load_checkpoint_file, read_run, save_checkpoint
from physgen.io.outputs import lock_output

TINY_NET = {"width": 8, "depth": 1}
SAMPLE = ("-n", "40", "--steps", "2", "--straightness", "0", "-q")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step EDM checkpoint on moons (tiny MLP)."""
    root = tmp_path_factory.mktemp("reliability")
    data = physgen.load_dataset("moons", 64, seed=0)
    net = physgen.get_network("mlp", data.event_shape, **TINY_NET)
    path = root / "tiny.safetensors"
    physgen.train(physgen.get_process("edm"), net, data, steps=2, batch_size=8,
                  checkpoint=path, progress=False)  # fmt: skip
    return path


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="physgen")


def one_line_error(result: Result) -> str:
    """The run failed with exactly one ``Error:`` line, no traceback, exit status ≠ 0."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- data lost: every output is declared and checked before any work ---------------------------


def test_sample_refuses_an_existing_png_beside_its_run_file(ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "fig.png").write_bytes(b"a figure someone made")
    before = snapshot(tmp_path)
    line = one_line_error(invoke("sample", ckpt, "--out", tmp_path / "fig.h5", *SAMPLE))
    assert "fig.png already exists" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("taken", ["train.h5", "loss.png"])
def test_train_refuses_existing_run_files_without_a_checkpoint(tmp_path: Path, taken: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / taken).write_bytes(b"precious")
    before = snapshot(tmp_path)
    line = one_line_error(invoke("train", "--steps", "1", "--n-data", "32", "--batch-size", "4",
                                 "--out", run, "-q"))  # fmt: skip
    assert f"{taken} already exists" in line
    assert snapshot(tmp_path) == before


def test_bench_never_deletes_what_it_did_not_write(tmp_path: Path) -> None:
    ckdir = tmp_path / "results" / "checkpoints"
    ckdir.mkdir(parents=True)
    (ckdir / "mine.safetensors").write_bytes(b"a user's model")
    before = snapshot(tmp_path)
    for extra in ((), ("--no-resume",)):
        line = one_line_error(invoke("bench", "--out", tmp_path / "results.h5", *extra, "-q"))
        assert "checkpoints already exists" in line
        assert snapshot(tmp_path) == before


SUITE = (
    'processes = ["edm"]\nnfe = [2, 4]\nn_data = 64\nn_samples = 32\nmetrics = ["sliced_w2"]\n'
    "[train]\nsteps = 3\nbatch_size = 8\n[network]\nconfig = { width = 8, depth = 1 }\n"
)


def test_bench_overwrite_removes_only_its_own_files(tmp_path: Path) -> None:
    from physgen.bench import load_suite, run_bench
    from physgen.bench.runner import MANIFEST

    (tmp_path / "s.toml").write_text(SUITE)
    suite, out = load_suite(tmp_path / "s.toml"), tmp_path / "b.h5"
    run_bench(suite, out, progress=False, echo=lambda _: None)
    ckdir = tmp_path / "b" / "checkpoints"
    written = set((ckdir / MANIFEST).read_text().split())
    assert written and all((ckdir / w).is_file() for w in written)
    (ckdir / "keep.txt").write_text("not the bench's")
    run_bench(suite, out, progress=False, overwrite=True, echo=lambda _: None)
    assert (ckdir / "keep.txt").read_text() == "not the bench's"
    assert all((ckdir / w).is_file() for w in written)  # retrained under the same names


# -- locks ---------------------------------------------------------------------------------


def test_a_locked_output_is_refused_naming_its_holder(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    with lock_output(out, "physgen sample (the other one)"):
        line = one_line_error(invoke("sample", ckpt, "--out", out, *SAMPLE))
    assert f"pid {os.getpid()} (physgen sample (the other one))" in line
    assert not out.exists()
    assert invoke("sample", ckpt, "--out", out, *SAMPLE).exit_code == 0  # released


def test_a_second_bench_on_one_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(SUITE)
    out = tmp_path / "b.h5"
    with lock_output(out, "physgen bench (first)"):
        line = one_line_error(invoke("bench", "--suite", tmp_path / "s.toml", "--out", out, "-q"))
    assert "in use by pid" in line and "physgen bench (first)" in line
    assert not out.exists()


def test_lock_is_released_and_its_file_removed(tmp_path: Path) -> None:
    target = tmp_path / "run"
    with lock_output(target, "x"):
        assert (tmp_path / ".run.lock").is_file()
        with pytest.raises(ConfigError, match="in use by pid"), lock_output(target):
            pass
    assert not (tmp_path / ".run.lock").exists()
    with lock_output(target):  # free again
        pass


def _physgen(*args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-m", "physgen.cli", *map(str, args)], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_trains_on_one_run_directory(tmp_path: Path) -> None:
    args = ("train", "--steps", "30", "--n-data", "64", "--batch-size", "8", "--net-opt",
            "width=8", "--net-opt", "depth=1", "--out", "run", "-q")  # fmt: skip
    procs = [_physgen(*args, cwd=tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes[0] == 0 and codes[1] != 0, results  # one ran, the other was refused
    loser = next(r for r in results if r[0] != 0)
    assert "Traceback" not in loser[2]
    assert loser[2].strip().count("\n") == 0
    assert "in use by pid" in loser[2] or "already exists" in loser[2]
    assert load_checkpoint_file(tmp_path / "run" / "checkpoint.safetensors").step == 30
    assert read_run(tmp_path / "run" / "train.h5").loss.shape == (30,)


# -- non-finite samples --------------------------------------------------------------------


def test_non_finite_samples_are_reported_and_left_out(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import physgen.sampling as sampling

    real = sampling.sample

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        out.x[::4] = float("nan")
        out.x[1, 0] = float("inf")
        return out

    monkeypatch.setattr(sampling, "sample", poisoned)
    result = invoke("sample", ckpt, "--out", tmp_path / "s.h5", *SAMPLE)
    assert result.exit_code == 0, result.output
    assert "11 of 40 samples are not finite" in result.output
    run = read_run(tmp_path / "s.h5")
    x, attrs = run.samples["samples"]
    assert x.shape == (40, 2) and attrs["nonfinite"] == 11  # stored as sampled
    assert np.isfinite(run.metrics["sliced_w2"]) and run.metrics["metrics_n"] == 29
    assert (tmp_path / "s.png").stat().st_size > 0


def test_metrics_use_a_bounded_recorded_subset(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import physgen.cli.sample_run as run_mod

    monkeypatch.setattr(run_mod, "METRICS_MAX_N", 16)
    result = invoke("sample", ckpt, "--out", tmp_path / "s.h5", *SAMPLE)
    assert result.exit_code == 0 and "metrics on the first 16" in result.output
    run = read_run(tmp_path / "s.h5")
    assert run.metrics["metrics_n"] == 16 and len(run.samples["samples"][0]) == 40


# -- write failures ------------------------------------------------------------------------


@contextlib.contextmanager
def mounted(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                       check=True, capture_output=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_full_disk_checkpoint_is_one_line_naming_the_target(tmp_path: Path) -> None:
    with mounted(tmp_path / "full", "size=64k") as full:
        target = full / "c.safetensors"
        with pytest.raises(WriteError, match=rf"cannot write {target}: .*No space left") as err:
            save_checkpoint(target, net={"w": torch.zeros(100_000)}, ema=None, process=None,
                            optimizer=None, meta={})  # fmt: skip
        assert ".tmp" not in str(err.value)
        assert list(full.iterdir()) == []  # no temporary file left


def test_full_disk_sample_is_one_line(ckpt: Path, tmp_path: Path) -> None:
    with mounted(tmp_path / "full", "size=64k") as full:
        result = invoke("sample", ckpt, "--out", full / "s.h5", "-n", "30000", "--steps", "1",
                        "--no-metrics", "--straightness", "0", "-q")  # fmt: skip
        line = one_line_error(result)
        assert "cannot write" in line and ".tmp" not in line and "No space left" in line
        assert not [p for p in full.iterdir() if p.name.endswith(".tmp")]


def test_read_only_directory_fails_before_any_work(ckpt: Path, tmp_path: Path) -> None:
    with mounted(tmp_path / "ro", "ro,size=64k") as ro:
        start = time.perf_counter()
        line = one_line_error(invoke("sample", ckpt, "--out", ro / "s.h5", "-n", "200000", "-q"))
        assert f"cannot write {ro / 's.h5'}" in line and "Read-only" in line
        assert time.perf_counter() - start < 30  # refused before sampling 200k points
        line = one_line_error(invoke("train", "--steps", "1", "--out", ro / "run", "-q"))
        assert "Read-only" in line


# -- signals at random points --------------------------------------------------------------


# random points, drawn once with a fixed seed (a subprocess per example: no shrinking)
@pytest.mark.parametrize(
    ("delay", "sig"),
    [
        (random.Random(i).uniform(0.0, 4.0), s)
        for i, s in enumerate([signal.SIGINT, signal.SIGKILL, signal.SIGINT])
    ],
)
def test_sample_killed_at_any_point_leaves_only_complete_files(
    ckpt: Path, tmp_path_factory: pytest.TempPathFactory, delay: float, sig: int
) -> None:
    root = tmp_path_factory.mktemp("kill")
    (root / "old.txt").write_text("precious")
    before = snapshot(root)
    proc = _physgen("sample", ckpt, "--out", "s.h5", "-n", "3000", "--steps", "4", "-q", cwd=root)
    # from the moment the command holds its output (imports done: a Ctrl-C during Python's
    # start-up is the interpreter's, not the command's) to some time later
    while not (root / ".s.h5.lock").exists() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err
    after = snapshot(root)
    assert {k: after[k] for k in before} == before
    if (root / "s.h5").exists():  # a final name only ever holds a complete file
        assert read_run(root / "s.h5").samples["samples"][0].shape == (3000, 2)
    assert not list(root.glob(".*.tmp")) or sig == signal.SIGKILL  # SIGINT cleans up


@pytest.mark.parametrize("delay", [0.0, random.Random(17).uniform(0.2, 3.0)])
def test_bench_interrupted_at_any_point_then_completes(
    tmp_path_factory: pytest.TempPathFactory, delay: float
) -> None:
    from physgen.bench.store import read_bench

    root = tmp_path_factory.mktemp("bench-kill")
    (root / "s.toml").write_text(SUITE)
    args = ("bench", "--suite", "s.toml", "--out", "b.h5", "--no-plots", "-q")
    proc = _physgen(*args, cwd=root)
    while not (root / ".b.h5.lock").exists() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # Known open defect (issue 17): bench has no deferred SIGINT handler yet, so a Ctrl-C that
    # lands inside a garbage-collector callback is dropped by Python with its own
    # "Exception ignored in ..." report. Every other traceback is a failure.
    ours = err.split("Exception ignored in")[0] if "Exception ignored in" in err else err
    assert "Traceback" not in ours, err
    if (root / "b.h5").exists():
        read_bench(root / "b.h5")  # complete and readable
    again = _physgen(*args, cwd=root)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert len(read_bench(root / "b.h5").cells) == 4  # edm: dpmpp_2m and heun, 2 budgets


# -- hostile checkpoints -------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(["step", "process", "network", "dataset", "optimizer", "train"]),
       value=JSON)  # fmt: skip
def test_hand_edited_metadata_is_refused_or_works(ckpt: Path, field: str, value: object) -> None:
    raw, tensors = load_checkpoint_file(ckpt), safetensors.torch.load_file(str(ckpt))
    meta = {**raw.meta, field: value}
    edited = ckpt.with_name(f"edited-{os.getpid()}.safetensors")
    safetensors.torch.save_file(tensors, str(edited), {"physgen": json.dumps(meta)})
    net = physgen.get_network("mlp", (2,), **TINY_NET)
    for call in (
        lambda: physgen.load_checkpoint(edited),
        lambda: physgen.train(
            physgen.get_process("edm"),
            net,
            physgen.load_dataset("moons", 64),
            steps=3,
            batch_size=8,
            checkpoint=edited,
            resume=True,
            progress=False,
        ),
    ):
        with contextlib.suppress(PhysgenError):
            call()


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"step": "abc"}, "metadata step must be an integer"),
        ({"optimizer": {"state_scalars": {}}}, "optimizer.param_groups is missing"),
        ({"optimizer": {"param_groups": [{}], "state_scalars": {"odd": 1}}}, "odd optimizer"),
    ],
)
def test_hostile_metadata_messages(ckpt: Path, tmp_path: Path, change: dict, phrase: str) -> None:
    raw, tensors = load_checkpoint_file(ckpt), safetensors.torch.load_file(str(ckpt))
    edited = tmp_path / "edited.safetensors"
    safetensors.torch.save_file(
        tensors, str(edited), {"physgen": json.dumps({**raw.meta, **change})}
    )
    net = physgen.get_network("mlp", (2,), **TINY_NET)
    with pytest.raises(CheckpointError, match=phrase):
        physgen.train(physgen.get_process("edm"), net, physgen.load_dataset("moons", 64), steps=3,
                      batch_size=8, checkpoint=edited, resume=True, progress=False)  # fmt: skip


# -- library arguments ---------------------------------------------------------------------

WRONG = st.one_of(st.none(), st.text(max_size=3), st.floats(),
                  st.lists(st.integers(max_value=64), max_size=2),  # no huge (valid) shapes
                  st.integers(max_value=0), st.booleans())  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(arg=st.sampled_from(["n", "steps", "batch_size", "event_shape", "sampler", "process"]),
       value=WRONG)  # fmt: skip
def test_library_sample_names_a_wrong_argument(arg: str, value: object) -> None:
    kwargs: dict = {"process": physgen.get_process("edm"), "event_shape": (2,), "n": 4,
                    "steps": 2, "sampler": "heun"}  # fmt: skip
    kwargs[arg] = value
    net = physgen.get_network("mlp", (2,), **TINY_NET)
    process, shape = kwargs.pop("process"), kwargs.pop("event_shape")
    try:
        out = physgen.sample(process, net, shape, **kwargs)
    except PhysgenError as err:
        assert arg in str(err) or arg == "sampler", str(err)
    else:  # only a value that is in fact valid gets here
        assert out.x.shape[0] == kwargs["n"]


@pytest.mark.parametrize(
    ("call", "phrase"),
    [
        (lambda: physgen.train("edm", None, None), "process must be a physgen Process"),
        (lambda: physgen.get_process(3), "name must be a non-empty string"),
        (lambda: physgen.get_network("mlp", "2"), "event_shape must be"),
        (lambda: physgen.load_dataset(3, 10), "spec must be a file path"),
        (lambda: physgen.load_checkpoint(None), "path must be a file path"),
        (lambda: physgen.read_run(5), "path must be a file path"),
        (lambda: physgen.metrics.sliced_w2([[0.0, 1.0]], torch.zeros(3, 2)), "samples must be"),
        (lambda: physgen.metrics.mmd_rbf(torch.zeros(3, 2), np.zeros((3, 2))), "reference must"),
    ],
)
def test_library_calls_name_the_argument(call, phrase: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=phrase):
        call()


# -- odd data and paths --------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".h5"])
def test_big_endian_arrays_load_like_native_ones(tmp_path: Path, suffix: str) -> None:
    x = np.random.default_rng(0).normal(size=(20, 2))
    path = tmp_path / f"be{suffix}"
    big, labels = x.astype(">f8"), (np.arange(20) % 3).astype(">i8")
    if suffix == ".npy":
        np.save(path, big)
    elif suffix == ".npz":
        np.savez(path, x=big, labels=labels)
    else:
        with h5py.File(path, "w") as f:
            f["x"], f["labels"] = big, labels
    data = physgen.load_dataset(str(path), 20)
    assert torch.equal(data.x, torch.from_numpy(x.astype(np.float32)))
    if suffix != ".npy":
        assert data.labels is not None and data.labels.tolist() == (np.arange(20) % 3).tolist()


@pytest.mark.parametrize("channels", [2, 4])
def test_alpha_image_grids_composite_over_white(tmp_path: Path, channels: int) -> None:
    import matplotlib.image

    from physgen.cli.plots import plot_image_grid

    images = np.full((4, channels, 8, 8), -1.0)  # black, and fully transparent
    images[0, -1] = 1.0  # the first image opaque
    plot_image_grid(tmp_path / "g.png", images)
    grid = matplotlib.image.imread(tmp_path / "g.png")
    tile = 32 // 8  # enlarged to 32 pixels a side
    assert np.allclose(grid[tile : 2 * tile, tile : 2 * tile, :3], 0.0)  # opaque: black
    assert np.allclose(grid[-2 * tile : -tile, -2 * tile : -tile, :3], 1.0)  # clear: white


def test_undecodable_bytes_in_the_output_path(ckpt: Path, tmp_path: Path) -> None:
    if sys.platform != "linux":
        pytest.skip("bytes paths are a POSIX matter")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    name = b"s-\xff\xfe.h5"
    proc = subprocess.run(
        [sys.executable.encode(), b"-m", b"physgen.cli", b"sample", bytes(ckpt), b"--out", name,
         *[a.encode() for a in SAMPLE]], cwd=tmp_path, env=env, capture_output=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    run = read_run(tmp_path / os.fsdecode(name))
    assert "\\udcff" in run.attrs["command"]  # stored visibly, not lost
