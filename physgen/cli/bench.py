"""``physgen bench``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from physgen.cli._common import command_line, device_option, overwrite_option, quiet_option

EPILOG = """\b
Examples:
  physgen bench                          # every installed process on moons, ~3 min, 2 cores
  physgen bench --suite my_suite.toml --out runs/my.h5
  physgen bench                          # again: resumes, skipping every complete cell
  physgen bench --overwrite --threads 2  # start over
  physgen bench --show-suite > my.toml   # the built-in suite as a file to edit

\b
A suite file (TOML; every key optional; --show-suite prints them all):
  datasets = ["moons", "8gaussians"]     # registered names or .npy/.npz/.h5 files
  processes = ["edm", "cfm", "cd", "rectified"]   # or "all"
  nfe = [2, 4, 8, 16]                    # NFE budgets per sampler
  seeds = [0, 1]
  [train]
  steps = 3000
  [network]
  config = { width = 256 }
  [process.cd]
  teacher = "edm"                        # distil this suite's edm model
  [process.rectified]
  teacher = "cfm"                        # reflow this suite's cfm model

\b
Writes ONE HDF5 file (samples, metrics, loss curves, measured NFE, wall seconds, options,
versions, seed, git commit; layout in physgen.bench.store) and, in the directory named like
it without .h5, the checkpoints, table.md and PNG plots (quality vs NFE, samples, losses).
The file is only ever replaced atomically: a killed run resumes where it stopped."""


@click.command(epilog=EPILOG)
@click.option(
    "--suite",
    "suite_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Suite file (TOML)  [default: the built-in 2-D suite of every installed process]",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="runs/bench.h5",
    show_default=True,
    help="Run file; checkpoints, table and plots go to the directory named like it.",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue an existing run file of the same suite (--no-resume: refuse it).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Torch CPU threads  [default: torch's choice]",
)
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write the PNG plots.")
@click.option(
    "--show-suite", is_flag=True, help="Print the resolved suite as a suite file (TOML), exit."
)
@device_option
@overwrite_option
@quiet_option
def bench(
    suite_path: str | None,
    out: str,
    resume: bool,
    threads: int | None,
    plots: bool,
    show_suite: bool,
    device: str,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Train every process on the same data, backbone and budget; sample each at a ladder of
    NFE budgets with the samplers it can serve; score against held-out data; write one HDF5
    file, a table and plots."""
    import torch

    from physgen.bench import load_suite, parse_suite, report, run_bench
    from physgen.cli._common import resolve_device

    if threads is not None:
        torch.set_num_threads(threads)
    suite = load_suite(suite_path) if suite_path else parse_suite({}, source="built-in suite")
    if show_suite:
        click.echo("".join(f"# note: {note}\n" for note in suite.notes) + suite.to_toml())
        return
    start = time.perf_counter()
    run = run_bench(
        suite,
        Path(out),
        device=resolve_device(device),
        progress=not quiet,
        overwrite=overwrite,
        resume=resume,
        command=command_line(),
        echo=click.echo,
    )
    rep = report(run.path, plots=plots)
    wall = time.perf_counter() - start
    click.echo(rep.table)
    click.echo(
        f"\n{run.computed} cells computed, {run.reused} found complete, {run.trained} models "
        f"trained; {wall:.0f} s on {torch.get_num_threads()} thread(s)"
    )
    click.echo(f"run file: {run.path}\ntable and plots: {Path(out).with_suffix('')}/")
