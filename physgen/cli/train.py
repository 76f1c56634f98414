"""``physgen train``: its options are the fields of :class:`TrainRun` (what the command
builds) and :class:`physgen.training.TrainConfig` (the loop's), derived by
:mod:`physgen.cli.options`."""

from __future__ import annotations

from dataclasses import dataclass

import click

from physgen.cli.options import check_env, click_options, split
from physgen.training.config import TrainConfig, option, validate

EPILOG = """\b
Examples:
  physgen train                                   # EDM on moons, writes runs/edm-moons/
  physgen train --process pfgmpp -o D=128 --dataset 8gaussians
  physgen train --dataset my_points.npy --steps 20000 --net-opt width=256
  physgen train --dataset digits --steps 2000     # images: U-Net (preset small) by default
  physgen train --out runs/edm-moons --resume     # continue from the last checkpoint
  PHYSGEN_TRAIN_OPTION="D=128 rho=7" physgen train -p pfgmpp   # -o through the environment
  physgen train -d digits --label-dropout 0.1     # class-conditional, for --guidance
  physgen train -d digits --latent ae --precision bf16 --compile
  torchrun --nproc-per-node 2 -m physgen train -d digits   # DDP, one rank per GPU
  physgen train -p rectified --reflow-from runs/edm-moons/checkpoint.safetensors
  physgen train -p rectified --reflow-from runs/rectified-edm-moons/checkpoint.safetensors
  physgen --config exp.toml train                 # options from the [train] table

\b
The run directory holds checkpoint.safetensors (weights + JSON metadata; loading it never
runs code), train.h5 (options, versions, loss curve) and loss.png. With --reflow-from it also
holds reflow_pairs.npz; chaining --reflow-from runs gives 2-, 3-, ... rectified flows."""


@dataclass(frozen=True)
class TrainRun:
    """What ``physgen train`` builds around the loop: process, data, network, files."""

    process: str = option("edm", "Process to train (list them with `physgen plugins`).", short="-p")
    process_options: tuple[str, ...] = option(
        (), "Process option, repeatable: -o D=128 -o sigma_max=20.", short="-o", flag="--option"
    )
    dataset: str = option(
        "moons",
        "Built-in dataset name, a .npy/.npz/.h5 file of shape [n, ...], or a folder of images "
        "(labels from sub-folders).",
        short="-d",
    )
    data_options: tuple[str, ...] = option(
        (),
        "Dataset option, repeatable: --data-opt flip=true (mirror images), --data-opt key=x.",
        flag="--data-opt",
    )
    n_data: int = option(  # or the word "stream"
        20_000, "Number of training examples drawn from a built-in dataset; 'stream': fresh "
        "draws every step (a file or folder: read lazily by --workers processes).", min=2,
        words=("stream",),
    )  # fmt: skip
    network: str | None = option(
        None, "Backbone name  [default: unet (preset small) for images [C, H, W], else mlp]",
        short="-n",
    )  # fmt: skip
    net_options: tuple[str, ...] = option(
        (), "Backbone option, repeatable: --net-opt width=256.", flag="--net-opt"
    )
    class_cond: bool = option(False, "Class-conditional network (the dataset's labels).")
    latent: str | None = option(
        None,
        "Train in an autoencoder's latent space: 'ae' trains one on the data first, PATH loads "
        "one from a latent-mode checkpoint.",
    )
    teacher: str | None = option(
        None, "Teacher checkpoint, for distillation processes (sets -o teacher=PATH)."
    )
    reflow_from: str | None = option(
        None,
        "Reflow: integrate this checkpoint's ODE (any ODE process) from fresh noise, store the "
        "(noise, sample) pairs in the run directory and train on them (sets -o pairs=FILE; the "
        "process needs a 'pairs' option, e.g. rectified).",
    )
    reflow_pairs: int | None = option(
        None, "Number of reflow pairs to generate  [default: --n-data]", min=2
    )
    reflow_sampler: str = option(
        "dopri5", "Deterministic sampler that integrates the teacher's ODE for --reflow-from."
    )
    out: str | None = option(
        None,
        "Run directory  [default: runs/<process>-<dataset>, or runs/<process>-<teacher run> "
        "with --reflow-from]",
    )
    resume: bool = option(False, "Continue from the run directory's checkpoint.")
    device: str = option(
        "auto",
        "Torch device: auto (CUDA when present), cpu, cuda, cuda:1, ...",
    )
    overwrite: bool = option(False, "Replace existing output files instead of refusing.")
    quiet: bool = option(False, "No progress bars.", short="-q")

    def __post_init__(self) -> None:
        validate(self)


@click.command(epilog=EPILOG)
@click_options("train", TrainRun, TrainConfig)
@click.pass_context
def train(ctx: click.Context, **values: object) -> None:
    """Train a generative process on a dataset with the shared backbone.

    Every process trains through the same loop (Adam, EMA, gradient clipping, atomic
    checkpoints with exact resume); only its loss differs. Options also come from
    PHYSGEN_TRAIN_<FLAG> variables and the [train] table of --config (command line first).
    """
    from physgen.cli.train_run import run_train

    check_env("train", TrainRun, TrainConfig)
    run, loop = split(values, TrainRun, TrainConfig)
    try:
        run_train(TrainRun(**run), TrainConfig(**loop), ctx)
    except KeyboardInterrupt:  # outside the loop (data, autoencoder, reflow pairs, run file)
        click.echo("interrupted outside the training loop; no checkpoint written now", err=True)
        ctx.exit(130)
