"""Every bad input we know of, as one table: exit status 2, one line naming the problem, no
traceback, and no file in the working directory created or changed.

The commands run in-process through click's runner with ``standalone_mode`` (what the
``physgen`` script does), in a shared workspace of prepared files (a tiny checkpoint, damaged
data and checkpoints, existing outputs). ``python tests/test_bad_inputs.py`` prints the table
of inputs and their messages.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner, Result

import physgen
from physgen.cli import cli
from physgen.io import load_checkpoint_file
from physgen.registry import get_registry

TRAIN = ("train", "--steps", "1", "--n-data", "64", "--batch-size", "4", "-q")
TINY = ("--net-opt", "width=8", "--net-opt", "depth=1")
SAMPLE = ("sample", "tiny.safetensors", "-n", "2", "--steps", "2", "--no-metrics", "-q")


class _Payload:
    """Unpickling this creates ``pwned`` in the working directory."""

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, ("pwned", "w"))


def _npy(path: Path, array: np.ndarray) -> None:
    np.save(path, array, allow_pickle=True)


def _workspace(root: Path) -> None:
    """The files the table refers to (relative to ``root``)."""
    data = physgen.load_dataset("moons", 64, seed=0)
    net = physgen.get_network("mlp", data.event_shape, width=8, depth=1)
    physgen.train(
        physgen.get_process("edm"), net, data, steps=1, batch_size=4,
        checkpoint=root / "tiny.safetensors", progress=False,
    )  # fmt: skip
    ck = root / "tiny.safetensors"
    raw, tensors = load_checkpoint_file(ck), safetensors.torch.load_file(str(ck))

    def with_meta(name: str, **changes: object) -> None:
        meta = {**raw.meta, **changes}
        safetensors.torch.save_file(tensors, str(root / name), {"physgen": json.dumps(meta)})

    with_meta("future.safetensors", format=99)
    with_meta("wide.safetensors", network={**raw.meta["network"], "config": {"width": 32}})
    with_meta("noproc.safetensors", process={"name": "nope", "options": {}})
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(root / "plain.safetensors"))
    (root / "cut.safetensors").write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    (root / "pickle.safetensors").write_bytes(pickle.dumps({"net.w": _Payload()}))
    torch.save({"net.w": _Payload()}, root / "zip.safetensors")
    (root / "text.safetensors").write_text("this is not a checkpoint")
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": "x"}}).encode()
    (root / "header.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (root / "dir.safetensors").mkdir()

    _npy(root / "nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0]]))
    _npy(root / "inf.npy", np.array([[0.0, np.inf]]))
    _npy(root / "big.npy", np.array([[1e39, 0.0]]))
    _npy(root / "flat.npy", np.arange(5.0))
    _npy(root / "scalar.npy", np.array(3.0))
    _npy(root / "empty.npy", np.zeros((0, 2)))
    _npy(root / "hollow.npy", np.zeros((4, 0)))
    _npy(root / "text.npy", np.array([["a", "b"]]))
    _npy(root / "complex.npy", np.ones((3, 2), complex))
    _npy(root / "object.npy", np.array([[_Payload()]], dtype=object))
    _npy(root / "good.npy", np.ones((100, 2)))
    good = (root / "good.npy").read_bytes()
    (root / "cut.npy").write_bytes(good[: len(good) // 2])
    (root / "noise.npy").write_bytes(b"\x93NUMPY\x01\x00" + bytes(range(256)))
    (root / "noise.npz").write_bytes(b"PK\x03\x04" + bytes(range(256)))
    np.savez(root / "labels.npz", x=np.ones((3, 2)), labels=np.array([0, 1]))
    np.savez(root / "ambiguous.npz", a=np.ones((3, 2)), b=np.ones((3, 2)))
    with zipfile.ZipFile(root / "pickle.npz", "w") as z:
        z.writestr("x.npy", (root / "object.npy").read_bytes())
    with h5py.File(root / "good.h5", "w") as f:
        f["x"] = np.ones((1000, 2))
    good = (root / "good.h5").read_bytes()
    (root / "cut.h5").write_bytes(good[: len(good) // 2])
    with h5py.File(root / "huge.h5", "w") as f:  # 2 rows of 10^12 values, stored sparsely
        f.create_dataset("x", shape=(2, 10**12), dtype="f4", chunks=(1, 1024))
    (root / "dir.npy").mkdir()
    (root / "afile").write_text("a file, not a directory")

    (root / "syntax.toml").write_text("[train\nsteps = 3")
    (root / "table.toml").write_text("[bogus]\nsteps = 3")
    (root / "options.toml").write_text("[train]\nprocess_options = 3")
    (root / "value.toml").write_text("[train]\nsteps = 'many'")

    taken = root / "runs" / "taken"
    taken.mkdir(parents=True)
    (taken / "checkpoint.safetensors").write_bytes(ck.read_bytes())
    (root / "taken.h5").write_bytes(b"precious results")


#: (id, command line, extra environment, phrase the one line must contain)
CASES: list[tuple[str, tuple[str, ...], dict[str, str], str]] = [
    # -- names
    ("unknown process", (*TRAIN, "--process", "nope"), {}, "unknown process 'nope'"),
    ("unknown dataset", (*TRAIN, "--dataset", "nope"), {}, "unknown dataset 'nope'"),
    ("unknown network", (*TRAIN, "--network", "nope"), {}, "unknown network 'nope'"),
    ("unknown sampler", (*SAMPLE, "--sampler", "nope"), {}, "unknown sampler 'nope'"),
    ("sampler the process cannot serve", (*SAMPLE, "--sampler", "consistency"), {},
     "needs the 'consistency' view"),
    ("unknown plugin kind", ("plugins", "--kind", "nope"), {}, "'nope' is not one of"),
    ("unknown command", ("bogus",), {}, "No such command 'bogus'"),
    # -- option pairs
    ("-o without =", (*TRAIN, "-o", "sigma_max"), {}, "must look like name=value"),
    ("-o with empty name", (*TRAIN, "-o", "=3"), {}, "must look like name=value"),
    ("-o unknown option", (*TRAIN, "-o", "bogus=1"), {}, "no option 'bogus'"),
    ("-o value of wrong type", (*TRAIN, "-o", "sigma_max=abc"), {}, "not a valid float"),
    ("--net-opt unknown", (*TRAIN, "--net-opt", "bogus=1"), {}, "no option 'bogus'"),
    ("--net-opt wrong type", (*TRAIN, "--net-opt", "width=wide"), {}, "not a valid int"),
    ("--opt unknown", (*SAMPLE, "--opt", "bogus=1"), {}, "has no option 'bogus'"),
    # -- impossible values
    ("negative sigma_max", (*TRAIN, "-o", "sigma_max=-1"), {}, "0 < sigma_min < sigma_max"),
    ("NaN sigma_min", (*TRAIN, "-o", "sigma_min=nan"), {}, "0 < sigma_min < sigma_max"),
    ("rho = 0", (*TRAIN, "-o", "rho=0"), {}, "rho must be positive"),
    ("rho < 0", (*TRAIN, "-o", "rho=-7"), {}, "rho must be positive"),
    ("PFGM++ D = 0", (*TRAIN, "-p", "pfgmpp", "-o", "D=0"), {}, "D must be > 0"),
    ("steps 0", ("train", "--steps", "0"), {}, "steps must be an integer ≥ 1, got 0"),
    ("batch 0", ("train", "--batch-size", "0"), {}, "batch_size must be an integer ≥ 1, got 0"),
    ("lr NaN", (*TRAIN, "--lr", "nan"), {}, "lr must be finite and > 0, got nan"),
    ("lr inf", (*TRAIN, "--lr", "inf"), {}, "lr must be finite and > 0, got inf"),
    ("lr negative", (*TRAIN, "--lr", "-1"), {}, "lr must be finite and > 0, got -1.0"),
    ("EMA decay 1", (*TRAIN, "--ema-decay", "1"), {}, "ema_decay must be finite and in [0, 1)"),
    ("EMA decay NaN", (*TRAIN, "--ema-decay", "nan"), {}, "ema_decay must be finite and in"),
    ("width 0", (*TRAIN, "--net-opt", "width=0"), {}, "MLP needs dim, width, depth ≥ 1"),
    ("n-data 1", (*TRAIN, "--n-data", "1"), {}, "n_data must be an integer ≥ 2, got 1"),
    ("negative seed", (*TRAIN, "--seed", "-1"), {},
     "seed must be an integer in [0, 2147483647], got -1"),
    ("S_churn NaN", (*SAMPLE, "-s", "heun_churn", "--opt", "S_churn=nan"), {},
     "S_churn must be ≥ 0, got nan"),
    ("dopri5 rtol < 0", (*SAMPLE, "-s", "dopri5", "--opt", "rtol=-1"), {}, "rtol, atol > 0"),
    ("0 samples", (*SAMPLE, "-n", "0"), {}, "num_samples must be an integer ≥ 1, got 0"),
    ("missing CUDA device", (*TRAIN, "--device", "cuda:7"), {}, "'cuda:7'"),
    ("unknown device", (*TRAIN, "--device", "tpu"), {}, "unknown device 'tpu'"),
    # -- data files
    ("NaN in data", (*TRAIN, "-d", "nan.npy"), {}, "nan.npy: non-finite value nan at row 1"),
    ("inf in data", (*TRAIN, "-d", "inf.npy"), {}, "inf.npy: non-finite value inf at row 0"),
    ("float32 overflow", (*TRAIN, "-d", "big.npy"), {}, "big.npy: value 1e+39"),
    ("1-D data", (*TRAIN, "-d", "flat.npy"), {}, "reshape to [n, 1]"),
    ("0-d data", (*TRAIN, "-d", "scalar.npy"), {}, "scalar.npy: array is 0-D"),
    ("0 rows", (*TRAIN, "-d", "empty.npy"), {}, "empty.npy: array has 0 rows"),
    ("empty examples", (*TRAIN, "-d", "hollow.npy"), {}, "hollow.npy: examples are empty"),
    ("string dtype", (*TRAIN, "-d", "text.npy"), {}, "text.npy: non-numeric dtype <U1"),
    ("complex dtype", (*TRAIN, "-d", "complex.npy"), {}, "non-numeric dtype complex128"),
    ("pickle in .npy", (*TRAIN, "-d", "object.npy"), {}, "object.npy: holds pickled Python"),
    ("pickle in .npz", (*TRAIN, "-d", "pickle.npz"), {}, "holds pickled Python objects"),
    ("truncated .npy", (*TRAIN, "-d", "cut.npy"), {}, "cut.npy: file is truncated"),
    ("random bytes .npy", (*TRAIN, "-d", "noise.npy"), {}, "noise.npy: not a valid .npy"),
    ("random bytes .npz", (*TRAIN, "-d", "noise.npz"), {}, "noise.npz: unreadable .npz"),
    ("truncated .h5", (*TRAIN, "-d", "cut.h5"), {}, "cut.h5: not a readable HDF5 file"),
    ("huge dimensions", (*TRAIN, "-d", "huge.h5"), {}, "more than half of this machine's"),
    ("labels of wrong length", (*TRAIN, "-d", "labels.npz"), {}, "labels have shape (2,)"),
    ("ambiguous .npz", (*TRAIN, "-d", "ambiguous.npz"), {}, "no array 'x' and not exactly"),
    ("missing data file", (*TRAIN, "-d", "missing.npy"), {}, "missing.npy: file not found"),
    ("directory as data", (*TRAIN, "-d", "dir.npy"), {}, "dir.npy: not a file"),
    ("unsupported suffix", (*TRAIN, "-d", "data.txt"), {}, "nor a file path ending in"),
    # -- checkpoints
    ("missing checkpoint", ("sample", "missing.safetensors"), {}, "checkpoint not found"),
    ("directory as checkpoint", ("sample", "dir.safetensors"), {}, "is a directory"),
    ("pickle as checkpoint", ("sample", "pickle.safetensors"), {}, "a pickle, not a"),
    ("torch.save zip as checkpoint", ("sample", "zip.safetensors"), {}, "a zip archive"),
    ("truncated checkpoint", ("sample", "cut.safetensors"), {}, "truncated checkpoint"),
    ("text as checkpoint", ("sample", "text.safetensors"), {}, "not a safetensors checkpoint"),
    ("malformed header", ("sample", "header.safetensors"), {}, "bad entry 'w'"),
    ("foreign safetensors", ("sample", "plain.safetensors"), {}, "without physgen metadata"),
    ("future format", ("sample", "future.safetensors"), {}, "format 99 is not supported"),
    ("weights that do not fit", ("sample", "wide.safetensors"), {}, "do not fit the network"),
    ("unknown process in ckpt", ("sample", "noproc.safetensors"), {}, "unknown process 'nope'"),
    ("pickle as teacher", (*TRAIN, "-p", "cd", "--teacher", "pickle.safetensors"), {},
     "refused without unpickling"),
    # -- outputs
    ("existing run without --overwrite", (*TRAIN, "--out", "runs/taken"), {},
     "already exists (pass --overwrite"),
    ("existing --out without --overwrite", (*SAMPLE, "--out", "taken.h5"), {},
     "taken.h5 already exists"),
    ("--out not .h5", (*SAMPLE, "--out", "x.txt"), {}, "--out must end in .h5 or .hdf5"),
    ("--out inside a file", (*SAMPLE, "--out", "afile/x.h5"), {}, "afile is not a directory"),
    ("run dir under a file", (*TRAIN, *TINY, "--out", "afile/run"), {}, "Not a directory"),
    ("run dir is a file", (*TRAIN, "--out", "afile"), {}, "Directory 'afile' is a file"),
    ("--resume without checkpoint", (*TRAIN, "--resume", "--out", "nowhere"), {},
     "--resume: no checkpoint in nowhere"),
    ("--resume with another batch size", ("train", "--steps", "2", "--batch-size", "8",
     "--n-data", "64", "--resume", "--out", "runs/taken", "-q", *TINY), {},
     "trained with batch_size=4, this run has 8"),
    # -- configuration files and environment
    ("bad TOML", ("--config", "syntax.toml", "train"), {}, "syntax.toml: not valid TOML"),
    ("unknown TOML table", ("--config", "table.toml", "train"), {}, "unknown table [bogus]"),
    ("options not a table", ("--config", "options.toml", "train"), {},
     "process_options must be a table"),
    ("TOML value of wrong type", ("--config", "value.toml", "train"), {},
     "value.toml: [train] steps must be an integer ≥ 1, got 'many'"),
    ("missing config file", ("--config", "none.toml", "train"), {}, "config file not found"),
    ("env steps not a number", TRAIN[:1], {"PHYSGEN_TRAIN_STEPS": "many"},
     "steps must be an integer, got 'many'"),
    ("env lr NaN", TRAIN, {"PHYSGEN_TRAIN_LR": "nan"}, "lr must be finite and > 0"),
    ("env flag not a bool", TRAIN, {"PHYSGEN_TRAIN_RESUME": "maybe"}, "'maybe' is not a valid"),
    ("env unknown sampler", SAMPLE, {"PHYSGEN_SAMPLE_SAMPLER": "nope"},
     "unknown sampler 'nope'"),
    ("plugin disabled by env", (*TRAIN, "-p", "edm"), {"PHYSGEN_DISABLE_PLUGINS": "diffusion"},
     "unknown process 'edm'"),
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    _workspace(root)
    return root


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes (an empty run directory made before
    the training options were checked is tolerated: it holds nothing)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if not p.is_dir()
    }


@pytest.fixture
def in_workspace(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(workspace)
    yield workspace
    get_registry(reload=True)  # drop a registry built under PHYSGEN_DISABLE_PLUGINS


def invoke(args: tuple[str, ...], env: dict[str, str]) -> Result:
    """``physgen ARGS`` as the console script runs it (standalone mode: click handles errors)."""
    if "PHYSGEN_DISABLE_PLUGINS" in env:
        os.environ["PHYSGEN_DISABLE_PLUGINS"] = env["PHYSGEN_DISABLE_PLUGINS"]
        try:
            get_registry(reload=True)
        finally:
            del os.environ["PHYSGEN_DISABLE_PLUGINS"]
    return CliRunner().invoke(cli, list(args), env=env, prog_name="physgen")


def error_line(result: Result) -> str:
    """The one ``Error:`` line; click's usage errors add only their ``Usage:``/``Try`` hints."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    hints = [line for line in lines if line not in errors]
    assert all(h.startswith(("Usage: ", "Try '")) for h in hints), result.output
    return errors[0]


@pytest.mark.parametrize(
    ("args", "env", "phrase"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_line(
    in_workspace: Path, args: tuple[str, ...], env: dict[str, str], phrase: str
) -> None:
    before = _snapshot(in_workspace)
    result = invoke(args, env)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 2, result.output
    assert phrase in error_line(result), (phrase, result.output)
    assert _snapshot(in_workspace) == before  # nothing created, nothing changed
    assert not (in_workspace / "pwned").exists()  # no pickle ran


def test_table_has_at_least_30_distinct_inputs() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 30
    assert len({(c[1], tuple(c[2].items())) for c in CASES}) == len(CASES)


if __name__ == "__main__":  # the table for the issue note: input -> message
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        _workspace(Path(tmp))
        os.chdir(tmp)
        for name, args, env, _ in CASES:
            result = invoke(args, env)
            get_registry(reload=True)
            shown = " ".join(f"{k}={v}" for k, v in env.items())
            line = error_line(result).removeprefix("Error: ")
            print(
                f"| {name} | `{(shown + ' ') if shown else ''}physgen {' '.join(args)}` | {line} |"
            )
