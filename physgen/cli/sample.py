"""``physgen sample``."""

from __future__ import annotations

from pathlib import Path

import click

from physgen.cli._common import (
    check_new,
    command_line,
    device_option,
    option_params,
    overwrite_option,
    parse_pairs,
    quiet_option,
    resolve_device,
    seed_option,
)

EPILOG = """\b
Examples:
  physgen sample                                  # runs/edm-moons/checkpoint.safetensors
  physgen sample runs/pfgmpp-moons/checkpoint.safetensors --sampler dpmpp_2m --steps 10
  physgen sample --sampler dopri5 --opt rtol=1e-4 --opt atol=1e-4
  physgen sample --sampler heun_churn --opt S_churn=40 --steps 64
  physgen sample --sampler unipc --steps 8 --schedule logsnr
  physgen sample runs/edm-digits/checkpoint.safetensors --guidance 2 --class 3
  physgen sample --nll 500                        # + exact NLL / bits-per-dim of 500 points

\b
Writes an HDF5 run file (samples, NFE, sampler, seed, versions, command line, metrics)
and a PNG of the samples beside it. Samplers must fit the process's views: `physgen plugins`
lists each sampler's view, and a mismatch names the samplers that do fit."""


@click.command(epilog=EPILOG)
@click.argument(
    "checkpoint", type=click.Path(dir_okay=False), default="runs/edm-moons/checkpoint.safetensors"
)
@click.option(
    "--sampler",
    "-s",
    default=None,
    help="Sampler name (see `physgen plugins`)  [default: the process's own: heun; "
    "consistency for ct/ict/cd]",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=18,
    show_default=True,
    help="Grid steps (Heun on a grid ending at σ=0 spends 2·steps−1 NFE).",
)
@click.option(
    "-n",
    "--num-samples",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Number of samples.",
)
@click.option(
    "--opt",
    "sampler_options",
    multiple=True,
    metavar="NAME=VALUE",
    help="Sampler option, repeatable: --opt S_churn=40.",
)
@click.option(
    "--schedule",
    default=None,
    metavar="NAME",
    help="σ-schedule replacing the process's grid, same endpoints (fixed-step samplers on a "
    "σ-grid: euler, heun, rk4 on diffusion/PFGM++ and every denoiser/score sampler): "
    "karras, logsnr, time_uniform, knots.",
)
@click.option(
    "--schedule-opt",
    "schedule_options",
    multiple=True,
    metavar="NAME=VALUE",
    help="Schedule option, repeatable: --schedule-opt rho=5.",
)
@click.option(
    "--guidance",
    type=float,
    default=1.0,
    show_default=True,
    help="Classifier-free guidance scale w: 0 unconditional, 1 conditional, >1 guided "
    "(class-conditional checkpoints).",
)
@click.option(
    "--guidance-interval",
    type=(float, float),
    default=None,
    metavar="LO HI",
    help="Guide only at view times in [LO, HI] (σ; t for flow-matching ODE samplers).",
)
@click.option(
    "--class",
    "class_label",
    type=click.IntRange(min=0),
    default=None,
    help="Class of every sample  [default: cycle through the classes]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Samples per batch (results do not depend on it).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Run file  [default: samples-<sampler>-<steps>.h5 beside the checkpoint; "
    "samples-<sampler>.h5 for adaptive solvers]",
)
@click.option(
    "--metrics/--no-metrics",
    default=True,
    show_default=True,
    help="Compare with fresh data from the training dataset (sliced W2, MMD).",
)
@click.option(
    "--nll",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also compute the exact negative log-likelihood (nats per example, bits per "
    "dimension) of this many fresh data points through the PF-ODE (dopri5, exact divergence; "
    "any process with an ode view and a prior density).",
)
@click.option(
    "--straightness",
    type=click.IntRange(min=0),
    default=256,
    show_default=True,
    help="Straightness of the learned ODE (Liu et al. 2023: mean squared deviation of the "
    "velocity from the straight chord, 0 for straight paths) from this many prior draws, "
    "RK4 on 64 steps; 0 turns it off. Processes with an ode view only.",
)
@seed_option
@device_option
@overwrite_option
@quiet_option
@click.pass_context
def sample(
    ctx: click.Context,
    checkpoint: str,
    sampler: str | None,
    steps: int,
    num_samples: int,
    sampler_options: tuple[str, ...],
    schedule: str | None,
    schedule_options: tuple[str, ...],
    guidance: float,
    guidance_interval: tuple[float, float] | None,
    class_label: int | None,
    batch_size: int,
    out: str | None,
    metrics: bool,
    nll: int,
    straightness: int,
    seed: int,
    device: str,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Draw samples from a trained checkpoint with any sampler its process can serve."""
    from physgen.cli.run import run_sample

    ckpt = Path(checkpoint)
    out_path = Path(out) if out else None  # default: named by run_sample from the sampler
    if out_path is not None:
        if out_path.suffix not in (".h5", ".hdf5"):
            from physgen.errors import ConfigError

            raise ConfigError(f"--out must end in .h5 or .hdf5, got {out_path.name}")
        check_new(out_path, overwrite)
    run_sample(
        checkpoint=ckpt,
        out_path=out_path,
        sampler=sampler,
        steps=steps,
        n=num_samples,
        sampler_options=parse_pairs(sampler_options, "--opt"),
        schedule=schedule,
        schedule_options=parse_pairs(schedule_options, "--schedule-opt"),
        batch_size=batch_size,
        metrics=metrics,
        nll=nll,
        straightness=straightness,
        seed=seed,
        device=resolve_device(device),
        progress=not quiet,
        overwrite=overwrite,
        config=option_params(ctx),
        command=command_line(),
        guidance=guidance,
        guidance_interval=guidance_interval,
        class_label=class_label,
    )
