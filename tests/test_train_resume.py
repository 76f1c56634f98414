"""``--resume`` continues the same run: every option that defines the run must be what the
checkpoint recorded (one line naming it, the saved and the given value), while budget-like
options (steps, checkpoint interval, logging, progress, device) may change."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from physgen.cli import cli
from physgen.io import load_checkpoint_file

BASE = ("train", "--steps", "2", "--n-data", "64", "--batch-size", "8", "--net-opt", "width=8",
        "--net-opt", "depth=1", "--device", "cpu", "-q")  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "run"
    r = CliRunner().invoke(cli, [*BASE, "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("-p", "ve"), "process.name='edm', this run has 've'"),
        (("-o", "sigma_max=20"), "process.options.sigma_max=80.0, this run has 20.0"),
        (("-d", "8gaussians"), "dataset.name='moons', this run has '8gaussians'"),
        (("--n-data", "128"), "dataset.size=64, this run has 128"),
        (("--data-opt", "noise=0.1"), "dataset."),
        (("--net-opt", "width=16"), "network.config.width=8, this run has 16"),
        (("--class-cond",), "network.num_classes=0"),
        (("--precision", "bf16"), "precision='fp32', this run has 'bf16'"),
        (("--lr", "1e-3"), "lr=0.002, this run has 0.001"),
        (("--seed", "1"), "seed=0, this run has 1"),
        (("--ema-decay", "0.9"), "ema_decay=0.999, this run has 0.9"),
        (("--grad-clip", "0"), "grad_clip=1.0, this run has 0.0"),
        (("--shards", "2"), "shards=1, this run has 2"),
    ],
)
def test_resume_refuses_another_run(run_dir: Path, change: tuple[str, ...], named: str) -> None:
    ckpt = run_dir / "checkpoint.safetensors"
    before = ckpt.read_bytes()
    r = CliRunner().invoke(cli, [*BASE, "--steps", "4", "--out", str(run_dir), "--resume", *change])
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error: cannot resume") and named in line, line
    assert ckpt.read_bytes() == before  # nothing trained, nothing relabelled


def test_resume_may_change_the_budget(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes((run_dir / "checkpoint.safetensors").read_bytes())
    budget = ("--steps", "5", "--checkpoint-every", "3", "--log-every", "1")
    r = CliRunner().invoke(cli, [*BASE, *budget, "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint_file(out / "checkpoint.safetensors").step == 5
