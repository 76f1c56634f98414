"""The CLI end to end on tiny data, and every user error as one line with a non-zero exit."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import physgen
from physgen.metrics import sliced_w2


def physgen_cli(*args: str, cwd: Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """Run ``physgen ARGS`` in a subprocess, as a user would."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "physgen.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
    )


def assert_user_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    """One line on stderr naming the problem, exit status 2, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, (f, err)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):  # type: ignore[no-untyped-def]
    """``physgen train`` on moons, small: the checkpoint every sampling test uses."""
    root = tmp_path_factory.mktemp("cli")
    r = physgen_cli(
        "train",
        "--steps",
        "2000",
        "--ema-decay",
        "0.995",
        "--n-data",
        "5000",
        "-o",
        "sigma_data=1.0",
        "--checkpoint-every",
        "500",
        "-q",
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    return root


@pytest.mark.slow
def test_train_then_sample_end_to_end(trained):  # type: ignore[no-untyped-def]
    run_dir = trained / "runs" / "edm-moons"
    for name in ("checkpoint.safetensors", "train.h5", "loss.png"):
        assert (run_dir / name).is_file(), name
    r = physgen_cli("sample", "-n", "1500", "-q", cwd=trained)
    assert r.returncode == 0, r.stderr
    h5 = run_dir / "samples-heun-18.h5"
    assert h5.is_file() and h5.with_suffix(".png").is_file()
    run = physgen.read_run(h5)
    x, attrs = run.samples["samples"]
    assert x.shape == (1500, 2)
    assert attrs["nfe"] == 35 and attrs["sampler"] == "heun" and attrs["process"] == "edm"
    assert "physgen sample" in run.attrs["command"] and run.attrs["seed"] == 0
    # quality: far closer to fresh data than the prior is
    fresh = physgen.load_dataset("moons", 1500, seed=123).x
    sw = sliced_w2(physgen.load_dataset("moons", 1500, seed=0).x.new_tensor(x), fresh)
    assert sw < 0.1 and run.metrics["sliced_w2"] < 0.1
    assert run.metrics["sliced_w2_prior"] > 20 * run.metrics["sliced_w2"]


@pytest.mark.slow
def test_other_samplers_and_refusal(trained):  # type: ignore[no-untyped-def]
    for sampler, steps in (("dpmpp_2m", "10"), ("euler", "20"), ("em", "30")):
        r = physgen_cli(
            "sample", "--sampler", sampler, "--steps", steps, "-n", "300", "-q", cwd=trained
        )
        assert r.returncode == 0, (sampler, r.stderr)
    out = trained / "nll.h5"
    r = physgen_cli("sample", "-n", "200", "--nll", "100", "--out", str(out), "-q", cwd=trained)
    assert r.returncode == 0, r.stderr
    metrics = physgen.read_run(out).metrics
    # a 2-D density concentrated on two thin arcs: well below a unit Gaussian's entropy
    assert 0 < metrics["nll"] < 2.84 and metrics["bpd"] == pytest.approx(
        metrics["nll"] / (2 * np.log(2))
    )
    r = physgen_cli("sample", "--sampler", "consistency", "-n", "10", "-q", cwd=trained)
    assert_user_error(r, "needs the 'consistency' view", "samplers that fit:", "heun")


@pytest.mark.slow
def test_resume_continues_training(trained):  # type: ignore[no-untyped-def]
    r = physgen_cli(
        "train",
        "--steps",
        "2100",
        "--ema-decay",
        "0.995",
        "--n-data",
        "5000",
        "-o",
        "sigma_data=1.0",
        "--resume",
        "-q",
        cwd=trained,
    )
    assert r.returncode == 0, r.stderr
    ckpt = physgen.load_checkpoint(trained / "runs/edm-moons/checkpoint.safetensors")
    assert ckpt.step == 2100


@pytest.mark.slow
def test_existing_outputs_are_not_overwritten(trained):  # type: ignore[no-untyped-def]
    ckpt = trained / "runs/edm-moons/checkpoint.safetensors"
    before = ckpt.read_bytes()
    r = physgen_cli("train", "--steps", "5", "-q", cwd=trained)
    assert_user_error(r, "already exists", "--overwrite")
    assert ckpt.read_bytes() == before
    out = trained / "taken.h5"
    out.write_bytes(b"precious")
    r = physgen_cli("sample", "--out", str(out), "-n", "5", cwd=trained)
    assert_user_error(r, "already exists")
    assert out.read_bytes() == b"precious"


# --- bad input: each one line, exit 2, no traceback, nothing written ------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--process", "nope"], ["unknown process 'nope'", "edm"]),
        (["train", "--dataset", "nope"], ["nope"]),
        (["train", "--network", "nope"], ["unknown network 'nope'"]),
        (["train", "-o", "sigma_max"], ["name=value"]),
        (["train", "-o", "bogus=1"], ["no option 'bogus'"]),
        (["train", "-o", "sigma_max=abc"], ["not a valid float"]),
        (["train", "--net-opt", "width=wide"], ["not a valid int"]),
        (["train", "--device", "cuda:7"], ["cuda"]),
        (["sample", "missing.safetensors"], ["missing.safetensors"]),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, args, fragments):  # type: ignore[no-untyped-def]
    r = physgen_cli(*args, "-q" if args[0] == "train" else "--no-metrics", cwd=tmp_path)
    assert_user_error(r, *fragments)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.h5"))


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_steps_must_be_positive(tmp_path, steps):  # type: ignore[no-untyped-def]
    r = physgen_cli("train", "--steps", steps, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--steps" in r.stderr


def test_unknown_sampler_is_one_line(tmp_path):  # type: ignore[no-untyped-def]
    ckpt = _tiny_checkpoint(tmp_path)
    r = physgen_cli("sample", str(ckpt), "--sampler", "nope", cwd=tmp_path)
    assert_user_error(r, "unknown sampler 'nope'")


def test_truncated_checkpoint(tmp_path):  # type: ignore[no-untyped-def]
    ckpt = _tiny_checkpoint(tmp_path)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    r = physgen_cli("sample", str(cut), cwd=tmp_path)
    assert_user_error(r, "cut.safetensors")


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/physgen-test-pickle-executed")


def test_pickle_checkpoint_is_refused_never_executed(tmp_path):  # type: ignore[no-untyped-def]
    MARKER.unlink(missing_ok=True)
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(_Payload()))
    r = physgen_cli("sample", str(evil), cwd=tmp_path)
    assert_user_error(r, "evil.safetensors")
    assert not MARKER.exists()


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.array([[0.0, 1.0], [np.nan, 2.0]]), "NaN"),
        (np.arange(5.0), "reshape"),
    ],
)
def test_bad_data_files(tmp_path, array, fragment):  # type: ignore[no-untyped-def]
    path = tmp_path / "data.npy"
    np.save(path, array)
    r = physgen_cli("train", "--dataset", str(path), "--steps", "3", "-q", cwd=tmp_path)
    assert_user_error(r, "data.npy", fragment)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.safetensors"))


def test_bad_config_file(tmp_path):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train\nsteps = 3")
    r = physgen_cli("--config", str(cfg), "train", cwd=tmp_path)
    assert_user_error(r, "c.toml", "TOML")


def test_config_precedence(tmp_path):  # type: ignore[no-untyped-def]
    """command line > PHYSGEN_* environment > config file > default."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nsteps = 7\nprocess = "nope_from_file"\n')
    r = physgen_cli("--config", str(cfg), "train", "-q", cwd=tmp_path)
    assert_user_error(r, "nope_from_file")  # file beats default
    r = physgen_cli(
        "--config",
        str(cfg),
        "train",
        "-q",
        cwd=tmp_path,
        env={"PHYSGEN_TRAIN_PROCESS": "nope_from_env"},
    )
    assert_user_error(r, "nope_from_env")  # environment beats file
    r = physgen_cli(
        "--config",
        str(cfg),
        "train",
        "--process",
        "nope_from_cli",
        "-q",
        cwd=tmp_path,
        env={"PHYSGEN_TRAIN_PROCESS": "nope_from_env"},
    )
    assert_user_error(r, "nope_from_cli")  # command line beats both


def test_help_teaches_and_does_not_import_torch(tmp_path):  # type: ignore[no-untyped-def]
    code = (
        "import sys; from physgen.cli import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().endswith("False"), r.stdout
    assert "Examples" in r.stdout and "train" in r.stdout
    for cmd in ("train", "sample", "plugins"):
        r = physgen_cli(cmd, "--help", cwd=tmp_path)
        assert r.returncode == 0 and "Examples" in r.stdout


def _tiny_checkpoint(tmp_path: Path) -> Path:
    data = physgen.load_dataset("moons", 256, seed=0)
    process = physgen.get_process("edm")
    net = physgen.get_network("mlp", data.event_shape, width=16, depth=1)
    ckpt = tmp_path / "tiny.safetensors"
    physgen.train(process, net, data, steps=2, batch_size=8, checkpoint=ckpt, progress=False)
    return ckpt
