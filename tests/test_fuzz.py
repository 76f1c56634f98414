"""Property-based fuzzing (hypothesis) of the command line and of data files.

Property: whatever the options and files, ``physgen`` either succeeds (exit 0) or exits 2
with one ``Error:`` line (click's usage errors add their ``Usage:``/``Try`` hints) — never a
traceback, never an uncaught exception. Commands run in-process through click's runner in
standalone mode, as the console script does. Work stays tiny (1-2 steps, a few points, a
small net) and the numbers that size the work (steps, batch size, n) are drawn from small or
invalid values only, so each example takes a fraction of a second.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import physgen
from physgen.cli import cli

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- what a user might type ---------------------------------------------------------------

GARBAGE = st.sampled_from(
    ["", " ", "abc", "nan", "-nan", "inf", "-inf", "1e400", "-1e400", "0", "-1", "-0.0",
     "1e-300", "99999999999999999999999", "-99999999999999999999999", "0x10", "1_000",
     "3.5", "true", "null", "[]", "{}", "é", "a=b", "=", "\x00", "\n", "--", "-q"]
)  # fmt: skip
#: values for options that size the work: small or invalid only
SMALL = st.sampled_from(["1", "2", "3"]) | st.sampled_from(["-5", "0", "nan", "abc", "", "1e3"])
PATHS = st.sampled_from(
    ["", ".", "nul\x00l.h5", "x" * 300, "/proc/nope/x.h5", "dir/../y.h5", "ünï.h5", " ",
     "-", "out.h5", "out.txt", "sub/deeper/z.hdf5", "data.npy"]
)  # fmt: skip
PROCESSES = st.sampled_from(["edm", "vp", "ve", "ddpm", "pfgmpp", "cfm", "otcfm", "rectified",
                             "ct", "ict", "cd", "nope", "", "EDM", "edm "])  # fmt: skip
SAMPLERS = st.sampled_from(["heun", "euler", "em", "ddim", "dpmpp_2m", "ancestral", "pc",
                            "langevin", "heun_churn", "rk4", "consistency", "dopri5", "nope",
                            ""])  # fmt: skip
OPTION_NAMES = st.sampled_from(["sigma_max", "sigma_min", "sigma_data", "rho", "P_mean", "D",
                                "teacher", "S_churn", "rtol", "atol", "width", "depth",
                                "bogus", "", " ", "x y"])  # fmt: skip


def mixed(valid: list[str], garbage: st.SearchStrategy[str] = GARBAGE) -> st.SearchStrategy[str]:
    """Mostly a valid value (so examples get past parsing into the work), else garbage."""
    good = st.sampled_from(valid)
    return st.one_of(good, good, good, garbage)


OPTION_VALUES = {
    "sigma_max": ["20", "80"], "sigma_min": ["0.01"], "sigma_data": ["1.0"], "rho": ["3"],
    "P_mean": ["-1"], "D": ["128", "inf"], "S_churn": ["10"], "rtol": ["1e-3"],
    "atol": ["1e-3"], "width": ["4"], "depth": ["2"], "teacher": ["tiny.safetensors"],
}  # fmt: skip


@st.composite
def pairs(draw: st.DrawFn, flag: str) -> list[str]:
    """``-o name=value`` pairs, some malformed."""
    out = []
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        name = draw(OPTION_NAMES)
        value = draw(mixed(OPTION_VALUES.get(name, ["1"])))
        sep = "=" if draw(st.integers(0, 7)) else draw(st.sampled_from([":", ""]))
        out += [flag, f"{name}{sep}{value}"]
    return out


@st.composite
def train_args(draw: st.DrawFn, data: str) -> list[str]:
    out = f"runs/fuzz-{draw(st.integers(0, 10**9))}"
    args = ["train", "--steps", "1", "--n-data", "16", "--batch-size", "4", "-q", "--out", out]
    args += ["--net-opt", "width=8", "--net-opt", "depth=1", "--checkpoint-every", "1"]
    choices = {
        "--process": PROCESSES,
        "--dataset": st.sampled_from(["moons", "8gaussians", "nope", data, "missing.npy"]),
        "--network": st.sampled_from(["mlp", "mlp", "unet", "nope"]),
        "--steps": SMALL,
        "--n-data": SMALL,
        "--batch-size": SMALL,
        "--lr": mixed(["1e-3", "0.5", "1e300"]),
        "--ema-decay": mixed(["0", "0.5", "0.999"]),
        "--grad-clip": mixed(["0", "1", "inf"]),
        "--checkpoint-every": SMALL,
        "--seed": mixed(["0", "7", "2147483647"]),
        "--device": st.sampled_from(["cpu", "auto", "cuda", "cuda:9", "tpu", "cpu:0", "", "-1"]),
        "--out": PATHS,
        "--teacher": st.one_of(st.just("tiny.safetensors"), PATHS),
        "--label-dropout": mixed(["0", "0.1"]),
        "--precision": mixed(["fp32", "bf16"]),
    }
    for name in draw(st.lists(st.sampled_from(sorted(choices)), max_size=4, unique=True)):
        args += [name, draw(choices[name])]
    args += draw(pairs("-o")) + draw(pairs("--net-opt"))
    for flag in ("--resume", "--overwrite", "--class-cond"):
        if draw(st.integers(0, 5)) == 0:
            args.append(flag)
    return args


@st.composite
def sample_args(draw: st.DrawFn, checkpoint: str, data: str) -> list[str]:
    target = draw(st.sampled_from([checkpoint] * 4 + [data, "missing.safetensors", "."]))
    out = f"fuzz-{draw(st.integers(0, 10**9))}.h5"
    args = ["sample", target, "-n", "3", "--steps", "2", "--no-metrics", "-q", "--out", out]
    choices = {
        "--sampler": SAMPLERS,
        "--steps": SMALL,
        "-n": SMALL,
        "--batch-size": SMALL,
        "--out": PATHS,
        "--seed": mixed(["0", "3"]),
        "--nll": st.sampled_from(["-1", "0", "2", "abc"]),
        "--device": st.sampled_from(["cpu", "cpu", "cuda:3", "nope"]),
        "--schedule": st.sampled_from(["karras", "nope", ""]),
    }
    for name in draw(st.lists(st.sampled_from(sorted(choices)), max_size=4, unique=True)):
        args += [name, draw(choices[name])]
    args += draw(pairs("--opt"))
    for flag in ("--overwrite", "--metrics"):
        if draw(st.booleans()):
            args.append(flag)
    return args


# -- data files ---------------------------------------------------------------------------

DTYPES = st.sampled_from(
    [np.float32, np.float64, np.float16, np.int8, np.int64, np.uint64, np.bool_, np.complex64,
     np.dtype("<U2"), np.dtype("S2"), np.dtype([("a", "f4"), ("b", "i2")])]
)  # fmt: skip


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    if dtype.kind == "f":
        elements = st.floats(width=8 * dtype.itemsize, allow_subnormal=False)
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _huge_header(shape: tuple[int, ...]) -> bytes:
    """A .npy header claiming ``shape``, followed by a few bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return buf.getvalue() + b"\0" * 64


@st.composite
def data_files(draw: st.DrawFn, folder: Path) -> Path:
    """A .npy/.npz/.h5 file: a random array, random bytes, a truncation or a huge header."""
    suffix = draw(st.sampled_from([".npy", ".npz", ".h5"]))
    path = folder / f"fuzz{suffix}"
    kind = draw(st.sampled_from(["array", "array", "array", "bytes", "cut", "huge"]))
    array = draw(arrays())
    if kind == "bytes":
        path.write_bytes(draw(st.binary(max_size=300)))
        return path
    if kind == "huge":
        shape = draw(st.sampled_from([(10**12, 2), (2, 10**12), (10**7, 10**7), (1, 2**62)]))
        if suffix == ".h5":
            with h5py.File(path, "w") as f:
                f.create_dataset("x", shape=shape, dtype="f4", chunks=(1,) * len(shape))
        elif suffix == ".npz":
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("x.npy", _huge_header(shape))
        else:
            path.write_bytes(_huge_header(shape))
        return path
    if suffix == ".npy":
        raw = _npy_bytes(array)
    elif suffix == ".npz":
        buf = io.BytesIO()
        extra = {"labels": draw(arrays())} if draw(st.booleans()) else {}
        np.savez(buf, x=array, **extra)
        raw = buf.getvalue()
    else:
        with h5py.File(path, "w") as f:
            if array.dtype.kind not in "U":  # HDF5 has no fixed-width unicode
                f["x"] = array
        raw = path.read_bytes()
    if kind == "cut":
        raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    path.write_bytes(raw)
    return path


# -- the property ---------------------------------------------------------------------------


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args, prog_name="physgen")


def assert_clean(result: Result) -> None:
    """Exit 0, or exit 2 with one ``Error:`` line; never a traceback or a crash."""
    event(f"exit {result.exit_code}")  # pytest --hypothesis-show-statistics shows the mix
    shown = f"exit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.output, shown
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"{exc!r}\n{shown}"
    if result.exit_code == 0:
        return
    assert result.exit_code == 2, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, shown
    assert all(line.startswith(("Usage: ", "Try '")) for line in lines if line not in errors), shown


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny trained checkpoint and a small good data file."""
    root = tmp_path_factory.mktemp("fuzz")
    data = physgen.load_dataset("moons", 32, seed=0)
    net = physgen.get_network("mlp", data.event_shape, width=8, depth=1)
    physgen.train(
        physgen.get_process("edm"), net, data, steps=2, batch_size=4,
        checkpoint=root / "tiny.safetensors", progress=False,
    )  # fmt: skip
    np.save(root / "data.npy", data.x.numpy())
    return root


@pytest.fixture
def in_workdir(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workdir)
    return workdir


@pytest.mark.slow
@FUZZ
@given(st.data())
def test_fuzz_train_options(in_workdir: Path, data: st.DataObject) -> None:
    assert_clean(invoke(data.draw(train_args("data.npy"))))


@pytest.mark.slow
@FUZZ
@given(st.data())
def test_fuzz_sample_options(in_workdir: Path, data: st.DataObject) -> None:
    assert_clean(invoke(data.draw(sample_args("tiny.safetensors", "data.npy"))))


@settings(FUZZ, max_examples=15)
@given(
    st.lists(st.sampled_from(["--kind", "processes", "bogus", "-h", "", "--debug", "x=y"]),
             max_size=3)
)  # fmt: skip
def test_fuzz_plugins_and_config(args: list[str]) -> None:
    assert_clean(invoke(["plugins", *args]))


@settings(FUZZ, max_examples=15)
@given(st.text(max_size=80))
def test_fuzz_config_file(tmp_path: Path, text: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text, encoding="utf-8", errors="surrogatepass")
    assert_clean(invoke(["--config", str(config), "plugins", "--kind", "networks"]))


@pytest.mark.slow
@settings(FUZZ, max_examples=40)
@given(st.data())
def test_fuzz_data_files(in_workdir: Path, data: st.DataObject) -> None:
    folder = in_workdir / "files"
    folder.mkdir(exist_ok=True)
    path = data.draw(data_files(folder))
    out = in_workdir / "runs" / "fuzz-data"
    result = invoke(
        ["train", "--dataset", str(path), "--steps", "1", "--n-data", "8", "--batch-size", "2",
         "--net-opt", "width=8", "--net-opt", "depth=1", "--network", "mlp",
         "--out", str(out), "--overwrite", "-q"]
    )  # fmt: skip
    assert_clean(result)
    os.unlink(path)
