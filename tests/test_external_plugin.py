"""The third-party plugin route from the outside: ``physgen-yukawa`` (plugins/example_external),
installed as its own distribution, is found through its entry point, listed with its package
name, can be disabled, and trains and samples through the CLI with no change to physgen.

CI installs it (``.ci/run``: ``pip install ./plugins/example_external``); without it these tests
are skipped."""

from __future__ import annotations

import importlib.metadata as md
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("physgen_yukawa")

from physgen.errors import ConfigError
from physgen.registry import Registry

PACKAGE = "physgen-yukawa"


def physgen_cli(*args: str, cwd: Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """``physgen ARGS`` in a fresh interpreter, as a user runs it."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "physgen.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
    )


def test_installed_as_its_own_distribution():
    """The plugin is a separate distribution whose only link to physgen is one entry point."""
    dist = md.distribution(PACKAGE)
    eps = [ep for ep in dist.entry_points if ep.group == "physgen"]
    assert [(ep.name, ep.value) for ep in eps] == [("yukawa", "physgen_yukawa")]
    assert any(r.startswith("physgen") for r in dist.requires or [])


def test_registry_finds_it_by_entry_point():
    reg = Registry()
    entry = reg.process("yukawa")
    assert entry.cls.__module__ == "physgen_yukawa.yukawa"
    assert reg.plugin_of("processes", "yukawa").package == PACKAGE
    assert entry.cls().views() == ("ode", "denoiser")
    assert "yukawa" not in reg.conflicts("processes") and not reg.broken()


def test_core_knows_no_plugin():
    """No change to the core: nothing under physgen/ names the plugin."""
    import physgen

    root = Path(physgen.__file__).parent
    assert not [p for p in root.rglob("*.py") if "yukawa" in p.read_text().lower()]


def test_plugins_command_lists_it_with_its_package():
    from physgen.cli import cli

    runner = CliRunner()
    out = runner.invoke(cli, ["plugins", "--kind", "plugins"])
    assert out.exit_code == 0, out.output
    row = next(line for line in out.output.splitlines() if line.split()[:1] == ["yukawa"])
    assert row.split()[1:] == [PACKAGE, "ok"]
    out = runner.invoke(cli, ["plugins", "--kind", "processes"])
    assert out.exit_code == 0, out.output
    block = out.output.split("  yukawa ", 1)[1]
    assert "views: ode, denoiser" in block and "-o m=1.0   # mass m ≥ 0" in block


def test_disabled_by_name():
    reg = Registry(disabled=["yukawa"])
    info = next(p for p in reg.plugins if p.name == "yukawa")
    assert (info.package, info.ok) == (PACKAGE, False) and "PHYSGEN_DISABLE_PLUGINS" in info.reason
    with pytest.raises(ConfigError, match="unknown process 'yukawa'"):
        reg.process("yukawa")
    assert "edm" in reg.names("processes")  # the rest keep working


@pytest.mark.slow
def test_disabled_by_the_environment(tmp_path):
    env = {"PHYSGEN_DISABLE_PLUGINS": "yukawa"}
    r = physgen_cli("plugins", "--kind", "plugins", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.split()[:1] == ["yukawa"])
    assert PACKAGE in row and "disabled by PHYSGEN_DISABLE_PLUGINS" in row
    r = physgen_cli(
        "train", "--process", "yukawa", "--out", str(tmp_path / "x"), cwd=tmp_path, env=env
    )
    assert r.returncode == 2 and "unknown process 'yukawa'" in r.stderr


@pytest.mark.slow
def test_train_then_sample_through_the_cli(tmp_path):
    """``physgen train --process yukawa`` then ``physgen sample`` with an ODE sampler and with
    DPM-Solver++ on its denoiser view: finite samples far closer to fresh data than the prior
    (measured sliced W2 0.10 and 0.095; prior 81, N(0, I) 0.25, fresh data 0.053); the exact
    NLL through the prior's density is finite; a score sampler is a one-line error."""
    from physgen.io import read_run

    run = tmp_path / "run"
    train = "train --process yukawa -o m=1.0 -o sigma_data=1.0 --dataset swissroll "
    train += f"--n-data 4000 --steps 200 --lr 3e-3 --ema-decay 0.99 --out {run} -q"
    r = physgen_cli(*train.split(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ckpt = run / "checkpoint.safetensors"
    for sampler, extra in (("heun", ""), ("dpmpp_2m", " --nll 16")):
        out = tmp_path / f"{sampler}.h5"
        r = physgen_cli(
            *f"sample {ckpt} -s {sampler} -n 500 --out {out} -q{extra}".split(), cwd=tmp_path
        )
        assert r.returncode == 0, r.stderr
        result = read_run(out)
        x, attrs = next(iter(result.samples.values()))
        assert x.shape == (500, 2) and bool(np.isfinite(x).all()) and attrs["process"] == "yukawa"
        m = result.metrics
        assert m["sliced_w2"] < 0.18 and m["sliced_w2_prior"] > 50
    assert math.isfinite(m["nll"])
    r = physgen_cli(
        "sample", str(ckpt), "-s", "langevin", "--out", str(tmp_path / "x.h5"), cwd=tmp_path
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "samplers that fit" in r.stderr
