"""``physgen sample``: its options are the fields of :class:`SampleConfig`, derived by
:mod:`physgen.cli.options`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from physgen.cli.options import check_env, click_options
from physgen.training.config import option, validate

EPILOG = """\b
Examples:
  physgen sample                                  # runs/edm-moons/checkpoint.safetensors
  physgen sample runs/pfgmpp-moons/checkpoint.safetensors --sampler dpmpp_2m --steps 10
  physgen sample --sampler dopri5 --opt rtol=1e-4 --opt atol=1e-4
  physgen sample --sampler heun_churn --opt S_churn=40 --steps 64
  physgen sample --sampler unipc --steps 8 --schedule logsnr
  physgen sample runs/edm-digits/checkpoint.safetensors --guidance 2 --class 3
  physgen sample --nll 500                        # + exact NLL / bits-per-dim of 500 points
  physgen sample --ema-length 0.12                # EMA profile σ_rel 0.12 (post-hoc EMA)
  physgen sample runs/edm-digits/checkpoint.safetensors --guidance 2 \\
      --guide-with runs/edm-digits-small/checkpoint.safetensors   # autoguidance

\b
Writes an HDF5 run file (samples, NFE, sampler, seed, versions, command line, metrics)
and a PNG of the samples beside it. Samplers must fit the process's views: `physgen plugins`
lists each sampler's view, and a mismatch names the samplers that do fit."""


@dataclass(frozen=True)
class SampleConfig:
    """The options of ``physgen sample`` (``PHYSGEN_SAMPLE_*``, ``[sample]`` in --config)."""

    sampler: str | None = option(
        None,
        "Sampler name (see `physgen plugins`)  [default: the process's own: heun; "
        "consistency for ct/ict/cd]",
        short="-s",
    )
    steps: int = option(
        18, "Grid steps (Heun on a grid ending at σ=0 spends 2·steps−1 NFE).", min=1
    )
    num_samples: int = option(2000, "Number of samples.", short="-n", min=1)
    sampler_options: tuple[str, ...] = option(
        (), "Sampler option, repeatable: --opt S_churn=40.", flag="--opt"
    )
    schedule: str | None = option(
        None,
        "σ-schedule replacing the process's grid, same endpoints (fixed-step samplers on a "
        "σ-grid: euler, heun, rk4 on diffusion/PFGM++ and every denoiser/score sampler): "
        "karras, logsnr, time_uniform, knots.",
    )
    schedule_options: tuple[str, ...] = option(
        (), "Schedule option, repeatable: --schedule-opt rho=5.", flag="--schedule-opt"
    )
    guidance: float = option(
        1.0,
        "Classifier-free guidance scale w: 0 unconditional, 1 conditional, >1 guided "
        "(class-conditional checkpoints).",
    )
    guidance_interval: tuple[float, float] | None = option(
        None, "Guide only at view times in [LO, HI] (σ; t for flow-matching ODE samplers)."
    )
    ema_length: float | None = option(
        None, "Sample with the EMA of relative length σ_rel: a profile the run tracked "
        "(train --ema-length), else rebuilt from its snapshots (post-hoc EMA, EDM2).",
        min=0, min_open=True, max=0.2886751345948129, max_open=True,
    )  # fmt: skip
    guide_with: str | None = option(
        None, "Autoguidance: guide with this checkpoint, a smaller or less-trained model of "
        "the same process and data (--guidance w: bad + w (good − bad)).",
    )  # fmt: skip
    class_label: int | None = option(
        None, "Class of every sample  [default: cycle through the classes]", flag="--class", min=0
    )
    batch_size: int = option(4096, "Samples per batch (results do not depend on it).", min=1)
    out: str | None = option(
        None,
        "Run file  [default: samples-<sampler>-<steps>.h5 beside the checkpoint; "
        "samples-<sampler>.h5 for adaptive samplers]",
    )
    metrics: bool = option(
        True, "Compare with fresh data from the training dataset (sliced W2, MMD)."
    )
    nll: int = option(
        0,
        "Also compute the exact negative log-likelihood (nats per example, bits per dimension) "
        "of this many fresh data points through the PF-ODE (dopri5, exact divergence; any "
        "process with an ode view and a prior density).",
        min=0,
    )
    straightness: int = option(
        256,
        "Straightness of the learned ODE (Liu et al. 2023: mean squared deviation of the "
        "velocity from the straight chord, 0 for straight paths) from this many prior draws, "
        "RK4 on 64 steps; 0 turns it off. Processes with an ode view only.",
        min=0,
    )
    clip_denoised: float = option(
        0.0,
        "Clamp the denoiser D(x; σ) to [-C, C] at every step, as Ho et al.'s sampler clips x̂_0 "
        "to the data range (0: off; Gaussian processes and denoiser/score samplers).",
        min=0,
    )
    seed: int = option(
        0, "Seed for every random draw (noise, reference data).", min=0, max=2**31 - 1
    )
    device: str = option("auto", "Torch device: auto (CUDA when present), cpu, cuda, cuda:1, ...")
    overwrite: bool = option(False, "Replace existing output files instead of refusing.")
    quiet: bool = option(False, "No progress bars.", short="-q")

    def __post_init__(self) -> None:
        validate(self)


@click.command(epilog=EPILOG)
@click.argument(
    "checkpoint", type=click.Path(dir_okay=False), default="runs/edm-moons/checkpoint.safetensors"
)
@click_options("sample", SampleConfig)
@click.pass_context
def sample(ctx: click.Context, checkpoint: str, **values: object) -> None:
    """Draw samples from a trained checkpoint with any sampler its process can serve."""
    from physgen.cli._common import (
        check_new,
        command_line,
        option_params,
        parse_pairs,
        resolve_device,
    )
    from physgen.cli.sample_run import run_sample
    from physgen.errors import ConfigError

    check_env("sample", SampleConfig)
    c = SampleConfig(**values)  # type: ignore[arg-type]
    ckpt = Path(checkpoint)
    out_path = Path(c.out) if c.out else None  # default: named by run_sample from the sampler
    if out_path is not None:
        if out_path.suffix not in (".h5", ".hdf5"):
            raise ConfigError(f"--out must end in .h5 or .hdf5, got {out_path.name}")
        check_new(out_path, c.overwrite)
    run_sample(
        checkpoint=ckpt,
        out_path=out_path,
        sampler=c.sampler,
        steps=c.steps,
        n=c.num_samples,
        sampler_options=parse_pairs(c.sampler_options, "--opt"),
        schedule=c.schedule,
        schedule_options=parse_pairs(c.schedule_options, "--schedule-opt"),
        batch_size=c.batch_size,
        metrics=c.metrics,
        nll=c.nll,
        straightness=c.straightness,
        seed=c.seed,
        device=resolve_device(c.device),
        progress=not c.quiet,
        overwrite=c.overwrite,
        config=option_params(ctx),
        command=command_line(),
        guidance=c.guidance,
        guidance_interval=c.guidance_interval,
        class_label=c.class_label,
        clip_denoised=c.clip_denoised,
        ema_length=c.ema_length,
        guide_with=Path(c.guide_with) if c.guide_with else None,
    )
