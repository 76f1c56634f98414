"""``physgen bench``: suite validation (one line per bad field), the run file's layout, NFE
budgets, resume after SIGKILL, and bitwise determinism on the CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from physgen.bench import load_suite, parse_suite, read_bench, report, run_bench, steps_for_budget
from physgen.cli import cli
from physgen.io import read_run
from physgen.metrics import sliced_w2
from physgen.registry import get_registry

TINY = """\
processes = ["edm", "cd"]
nfe = [1, 4]
n_data = 512
n_samples = 128
metrics = ["sliced_w2"]
[train]
steps = 120
batch_size = 64
[network]
config = { width = 16, depth = 1, emb_dim = 16 }
[process.cd]
options = { num_scales = 6 }
"""
N_CELLS = 2 * 2 + 1 * 2  # edm: dpmpp_2m and heun; cd: consistency; two budgets each


def _tiny(root: Path):  # type: ignore[no-untyped-def]
    (root / "tiny.toml").write_text(TINY)
    return load_suite(root / "tiny.toml")


# -- validation: one line each, exit 2, no traceback -----------------------------------------

BAD = [
    ("stepz = 3", "unknown key stepz"),
    ("[train]\nstep = 3", "unknown key train.step"),
    ('processes = ["nope"]', "unknown process 'nope' (available: "),
    ('datasets = ["nope"]', "datasets: unknown dataset 'nope' (available: "),
    ('metrics = ["nope"]', "metrics: unknown metric 'nope' (available: "),
    ('processes = ["edm"]\nsamplers = ["nope"]', "samplers: unknown sampler 'nope' (available: "),
    ('processes = ["ct"]\nsamplers = ["heun"]', "cannot serve sampler 'heun'"),
    ('processes = ["edm"]\n[process.edm]\nsamplers = ["consistency"]', "process.edm.samplers"),
    ('processes = ["edm"]\nsamplers = ["dopri5"]', "'dopri5' is adaptive"),
    ("nfe = [0, 4]", "nfe entry must be a positive integer, got 0"),
    ("nfe = []", "nfe must be a non-empty list of integers"),
    ("[train]\nsteps = 0", "train.steps must be an integer ≥ 1, got 0"),
    ("[train]\nsteps = -5", "train.steps must be an integer ≥ 1, got -5"),
    ('[train]\nlr = "fast"', "train.lr must be finite and > 0, got 'fast'"),
    ("[train]\nlr = 0", "train.lr must be finite and > 0, got 0"),
    ("[train]\nsteps = 5.9", "train.steps must be an integer ≥ 1, got 5.9"),
    ("[train]\nema = 0.9", "unknown key train.ema"),
    ('seeds = "0"', "seeds must be a non-empty list of integers"),
    ("n_samples = 1.5", "n_samples must be an integer ≥ 2, got 1.5"),
    ("datasets = 3", "datasets must be a list of strings, got 3"),
    ("[network]\nconfig = { widht = 3 }", "network.config: 'mlp' has no option 'widht'"),
    ('[network]\nname = "nope"', "unknown network 'nope' (available: "),
    ('processes = ["edm"]\n[process.edm]\noptions = { foo = 1 }', "process.edm.options: "),
    ('processes = ["edm"]\n[process.cfm]\nsamplers = ["heun"]', "process.cfm: 'cfm' is not listed"),
    ('processes = ["cd"]\n[process.cd]\nteacher = "edm"', "'edm' is not a process of this suite"),
    (
        'processes = ["edm"]\n[process.edm]\nteacher = "edm"',
        "process 'edm' has no teacher or pairs option",
    ),
    ('processes = ["cd"]', "process 'cd' needs a teacher"),
    ('processes = ["edm"]\n[process.edm]\nsamplers = "heun"', "process.edm.samplers must be"),
    ("nfe = [4", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD, ids=[b[1][:40] for b in BAD])
def test_suite_errors_are_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(text + "\n")
    result = CliRunner().invoke(cli, ["bench", "--suite", str(suite), "--out", "x.h5", "-q"])
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and len(err.splitlines()) == 1, err
    assert err.startswith(f"Error: {suite}: ") and fragment in err, err
    assert not (tmp_path / "x.h5").exists()


def test_defaults_serve_every_process_and_order_teachers_first() -> None:
    suite = parse_suite({"processes": ["cd", "ct", "edm"]})
    labels = [p.label for p in suite.processes]
    assert labels.index("edm") < labels.index("cd")  # the teacher trains first
    assert suite.process("cd").teacher == "edm"
    assert suite.process("ct").samplers == ("consistency",)
    assert suite.process("ct").options["total_steps"] == suite.train.steps
    reg = get_registry()
    for p in suite.processes:
        views = reg.process(p.name).cls.views()
        assert all(reg.sampler(s).view in views for s in p.samplers), p


def test_builtin_suite_skips_unmet_needs_with_a_note_and_round_trips(tmp_path: Path) -> None:
    suite = parse_suite({})  # the built-in suite: every installed process
    names = set(get_registry().names("processes"))
    kept = {p.label for p in suite.processes}
    noted = {n.split()[1].rstrip(":") for n in suite.notes}
    assert kept | noted == names and not kept & noted
    assert suite.process("rectified").teacher == "cfm"  # reflow: 2-rectified from I-CFM
    assert [p.label for p in suite.processes].index("cfm") < [
        p.label for p in suite.processes
    ].index("rectified")
    (tmp_path / "shown.toml").write_text(suite.to_toml())  # what --show-suite prints
    assert load_suite(tmp_path / "shown.toml").to_dict() == suite.to_dict()


def test_all_with_global_samplers_keeps_the_processes_that_serve_them() -> None:
    suite = parse_suite({"samplers": ["dpmpp_2m"]})
    reg = get_registry()
    for p in suite.processes:
        assert p.samplers == ("dpmpp_2m",)
    assert "ct" not in {p.label for p in suite.processes}
    assert any(n.startswith("skipped ct: it cannot serve sampler 'dpmpp_2m'") for n in suite.notes)
    assert all("denoiser" in reg.process(p.name).cls.views() for p in suite.processes)


@pytest.mark.parametrize(
    ("sampler", "budget", "steps", "nfe"),
    # closed forms: dpmpp_2m one evaluation per interval; Heun into σ = 0 spends 2n − 1
    [("dpmpp_2m", 7, 7, 7), ("heun", 7, 4, 7), ("heun", 8, 4, 7), ("heun", 1, 1, 1)],
)
def test_nfe_budget_takes_the_most_steps_that_fit(sampler, budget, steps, nfe) -> None:  # type: ignore[no-untyped-def]
    from physgen.core.process import karras_sigmas

    spec = get_registry().sampler(sampler)
    grid = lambda n: karras_sigmas(n, 0.002, 80.0)  # noqa: E731
    assert steps_for_budget(spec, grid, budget) == (steps, nfe)


def test_budget_below_one_step_is_reported() -> None:
    spec = get_registry().sampler("langevin")  # 10 corrector steps per level
    from physgen.core.process import karras_sigmas

    steps, cost = steps_for_budget(spec, lambda n: karras_sigmas(n, 0.002, 80.0), 4)
    assert steps == 0 and cost > 4


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_rectified_trains_on_its_teachers_reflow_pairs(tmp_path: Path) -> None:
    """A rectified-flow cell reflows its teacher (Liu et al. 2023): its training data is the
    teacher's ODE end points, stored beside the checkpoints. At NFE 1 only dpmpp_2m runs (one
    Heun step costs 2 NFE)."""
    from physgen.sampling.reflow import load_pairs

    (tmp_path / "r.toml").write_text(TINY.replace('["edm", "cd"]', '["cfm", "rectified"]')
                                     .replace("[process.cd]\noptions = { num_scales = 6 }\n", "")
                                     .replace("nfe = [1, 4]", "nfe = [1]"))  # fmt: skip
    run_bench(load_suite(tmp_path / "r.toml"), tmp_path / "r.h5", progress=False,
              echo=lambda s: None)  # fmt: skip
    bench = read_bench(tmp_path / "r.h5")
    assert bench.training["moons.rectified.s0"].attrs["teacher"] == "cfm"
    (pairs,) = (tmp_path / "r" / "checkpoints").glob("moons.rectified.s0.*.pairs.npz")
    (z, x), meta = load_pairs(pairs)
    assert x.shape == z.shape == (512, 2) and meta["teacher_process"]["name"] == "cfm"
    assert set(bench.cells) == {"moons.cfm.s0.dpmpp_2m.nfe1", "moons.rectified.s0.dpmpp_2m.nfe1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    run = run_bench(_tiny(root), root / "a.h5", progress=False, echo=lambda s: None)
    assert run.computed == N_CELLS and run.trained == 2
    return root


@pytest.mark.slow
def test_run_file_layout_metrics_and_plots(tiny: Path) -> None:
    path = tiny / "a.h5"
    bench = read_bench(path)
    for key in ("physgen_version", "torch_version", "python_version", "git_commit", "seed"):
        assert key in bench.attrs, key
    assert bench.attrs["kind"] == "bench" and bench.attrs["git_commit"]
    assert bench.config == load_suite(tiny / "tiny.toml").to_dict()
    assert set(bench.training) == {"moons.edm.s0", "moons.cd.s0"}
    for t in bench.training.values():
        assert t.loss.shape == (120,) and np.isfinite(t.loss).all()
        assert t.attrs["wall_seconds"] > 0 and (tiny / t.attrs["checkpoint"]).is_file()
    assert bench.training["moons.cd.s0"].attrs["teacher"] == "edm"
    ref, _ = bench.references["moons.s0"]
    assert ref.shape == (128, 2) and len(bench.cells) == N_CELLS
    expected = {("dpmpp_2m", 4): (4, 4), ("heun", 4): (2, 3), ("consistency", 4): (4, 4)}
    for cell in bench.cells.values():
        a = cell.attrs
        assert cell.samples.shape == (128, 2) and a["nfe"] <= a["nfe_budget"]
        if a["nfe_budget"] == 1:
            assert (a["steps"], a["nfe"]) == (1, 1)
        else:
            assert (a["steps"], a["nfe"]) == expected[(a["sampler"], 4)]
        # the stored metric is the metric of the stored arrays
        again = sliced_w2(torch.from_numpy(cell.samples), torch.from_numpy(ref),
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert cell.metrics["sliced_w2"] == again
    # trained samples beat the prior: fewer than the edm grid's σ_max = 80 spread
    best = min(c.metrics["sliced_w2"] for c in bench.cells.values())
    assert best < 1.0
    run = read_run(path)  # an ordinary run file too
    assert len(run.samples) == N_CELLS and run.attrs["kind"] == "bench"
    rep = report(path)
    assert "| moons   | edm " in rep.table and "data (floor)" in rep.table
    for f in rep.files:
        assert f.is_file() and f.stat().st_size > 0
        if f.suffix == ".png":
            assert f.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_same_seed_same_numbers(tiny: Path) -> None:
    run_bench(_tiny(tiny), tiny / "b.h5", progress=False, echo=lambda s: None)
    _assert_same(read_bench(tiny / "a.h5"), read_bench(tiny / "b.h5"))


def _assert_same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert set(a.cells) == set(b.cells) and set(a.training) == set(b.training)
    for name, cell in a.cells.items():
        assert np.array_equal(cell.samples, b.cells[name].samples), name
        assert cell.metrics == b.cells[name].metrics, name
        assert cell.attrs["nfe"] == b.cells[name].attrs["nfe"]
    for name, t in a.training.items():
        assert np.array_equal(t.loss, b.training[name].loss), name


def _run_until(cmd: list[str], env: dict[str, str], stop) -> None:  # type: ignore[no-untyped-def]
    """Run ``cmd`` and SIGKILL it as soon as ``stop()`` holds (polled every 20 ms)."""
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None and not stop():
        time.sleep(0.02)
    alive = child.poll() is None
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate()
    assert alive and child.returncode == -signal.SIGKILL, err.decode()[-2000:]


@pytest.mark.slow
def test_resume_after_sigkill_recomputes_nothing(tiny: Path) -> None:
    out = tiny / "k.h5"
    cmd = [sys.executable, "-m", "physgen.cli", "bench", "--suite", str(tiny / "tiny.toml"),
           "--out", str(out), "-q", "--no-plots"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 1. killed right after its first cell is recorded (every read of the file succeeds)
    _run_until(cmd, env, lambda: out.exists() and bool(read_bench(out, samples=False).cells))
    first = read_bench(out)
    assert 1 <= len(first.cells) < N_CELLS and "moons.cd.s0" not in first.training
    # 2. resumed, then killed in the middle of cd's training (after its step-100 checkpoint)
    ckpts = tiny / "k" / "checkpoints"
    _run_until(cmd, env, lambda: bool(list(ckpts.glob("moons.cd.s0.*.safetensors"))))
    second = read_bench(out)
    assert set(second.cells) >= set(first.cells) and "moons.cd.s0" not in second.training
    # 3. resumed to the end
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    done = len(second.cells)
    assert f"{N_CELLS - done} cells computed, {done} found complete" in again.stdout
    final = read_bench(out)
    for name, cell in second.cells.items():  # kept as they were: not recomputed
        assert final.cells[name].attrs == cell.attrs
    for name, t in second.training.items():
        assert final.training[name].attrs == t.attrs
    assert final.training["moons.cd.s0"].attrs["resumed_from_step"] in (100, 120)  # not retrained
    _assert_same(read_bench(tiny / "a.h5"), final)  # and the same numbers as an unbroken run
    assert not list(tiny.glob(".k.h5.*.tmp"))


@pytest.mark.slow
def test_existing_file_of_another_suite_is_refused(tmp_path: Path, tiny: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text(TINY.replace("steps = 120", "steps = 121"))
    result = CliRunner().invoke(
        cli, ["bench", "--suite", str(other), "--out", str(tiny / "a.h5"), "-q"]
    )
    assert result.exit_code == 2
    assert "holds another suite (train: " in result.stderr and "--overwrite" in result.stderr
    result = CliRunner().invoke(
        cli, ["bench", "--suite", str(tiny / "tiny.toml"), "--out", str(tiny / "a.h5"),
              "--no-resume", "-q"],
    )  # fmt: skip
    assert result.exit_code == 2 and "exists" in result.stderr


def test_help_has_examples_and_its_suite_example_is_valid() -> None:
    from physgen.bench.suite import tomllib

    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output and "--suite" in result.output
    block = result.output.split("A suite file")[1].split("\n\n")[0].splitlines()[1:]
    suite = parse_suite(tomllib.loads("\n".join(line.strip() for line in block)))
    assert suite.datasets == ("moons", "8gaussians") and suite.train.steps == 3000
    assert suite.process("cd").teacher == "edm"


def test_cli_import_does_not_import_torch() -> None:
    code = "import sys, physgen.cli; from physgen.cli import bench; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
