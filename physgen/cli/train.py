"""``physgen train``."""

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
  physgen train                                   # EDM on moons, writes runs/edm-moons/
  physgen train --process pfgmpp -o D=128 --dataset 8gaussians
  physgen train --dataset my_points.npy --steps 20000 --net-opt width=256
  physgen train --dataset digits --steps 2000     # images: U-Net (preset small) by default
  physgen train --out runs/edm-moons --resume     # continue from the last checkpoint
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


@click.command(epilog=EPILOG)
@click.option(
    "--process",
    "-p",
    default="edm",
    show_default=True,
    help="Process to train (list them with `physgen plugins`).",
)
@click.option(
    "--option",
    "-o",
    "process_options",
    multiple=True,
    metavar="NAME=VALUE",
    help="Process option, repeatable: -o D=128 -o sigma_max=20.",
)
@click.option(
    "--dataset",
    "-d",
    default="moons",
    show_default=True,
    help="Built-in dataset name, a .npy/.npz/.h5 file of shape [n, ...], or a folder of images "
    "(labels from sub-folders).",
)
@click.option(
    "--data-opt",
    "data_options",
    multiple=True,
    metavar="NAME=VALUE",
    help="Dataset option, repeatable: --data-opt flip=true (mirror images), --data-opt key=x.",
)
@click.option(
    "--n-data",
    type=click.IntRange(min=2),
    default=20_000,
    show_default=True,
    help="Number of training examples drawn from a built-in dataset.",
)
@click.option(
    "--network",
    "-n",
    default=None,
    help="Backbone name  [default: unet (preset small) for images [C, H, W], else mlp]",
)
@click.option(
    "--net-opt",
    "net_options",
    multiple=True,
    metavar="NAME=VALUE",
    help="Backbone option, repeatable: --net-opt width=256.",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=3000, show_default=True, help="Optimizer steps."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=2e-3,
    show_default=True,
    help="Adam learning rate.",
)
@click.option(
    "--ema",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.999,
    show_default=True,
    help="EMA decay of the weights used for sampling.",
)
@click.option(
    "--grad-clip",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Clip the gradient norm to this value (0: off).",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Write a checkpoint every this many steps.",
)
@click.option(
    "--teacher",
    type=click.Path(dir_okay=False),
    default=None,
    help="Teacher checkpoint, for distillation processes (sets -o teacher=PATH).",
)
@click.option(
    "--reflow-from",
    type=click.Path(dir_okay=False),
    default=None,
    help="Reflow: integrate this checkpoint's ODE (any ODE process) from fresh noise, store the "
    "(noise, sample) pairs in the run directory and train on them (sets -o pairs=FILE; the "
    "process needs a 'pairs' option, e.g. rectified).",
)
@click.option(
    "--reflow-pairs",
    type=click.IntRange(min=2),
    default=None,
    help="Number of reflow pairs to generate  [default: --n-data]",
)
@click.option(
    "--reflow-sampler",
    default="dopri5",
    show_default=True,
    help="Deterministic sampler that integrates the teacher's ODE for --reflow-from.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory  [default: runs/<process>-<dataset>, or runs/<process>-<teacher run> "
    "with --reflow-from]",
)
@click.option("--resume", is_flag=True, help="Continue from the run directory's checkpoint.")
@click.option(
    "--class-cond", is_flag=True, help="Class-conditional network (the dataset's labels)."
)
@click.option(
    "--label-dropout",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Probability of training a label as 'none' (classifier-free guidance; implies "
    "--class-cond).",
)
@click.option(
    "--latent",
    default=None,
    metavar="ae|PATH",
    help="Train in an autoencoder's latent space: 'ae' trains one on the data first, PATH "
    "loads one from a latent-mode checkpoint.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="bf16: autocast the loss (weights, EMA and optimizer state stay fp32).",
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network.")
@click.option("--channels-last", is_flag=True, help="channels-last memory format (images).")
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    default=None,
    help="Split each batch into this many shards with their own noise (gradient "
    "accumulation)  [default: the torchrun world size]",
)
@seed_option
@device_option
@overwrite_option
@quiet_option
@click.pass_context
def train(
    ctx: click.Context,
    process: str,
    process_options: tuple[str, ...],
    dataset: str,
    data_options: tuple[str, ...],
    n_data: int,
    network: str | None,
    net_options: tuple[str, ...],
    steps: int,
    batch_size: int,
    lr: float,
    ema: float,
    grad_clip: float,
    checkpoint_every: int,
    teacher: str | None,
    reflow_from: str | None,
    reflow_pairs: int | None,
    reflow_sampler: str,
    out: str | None,
    resume: bool,
    class_cond: bool,
    label_dropout: float,
    latent: str | None,
    precision: str,
    compile_: bool,
    channels_last: bool,
    shards: int | None,
    seed: int,
    device: str,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Train a generative process on a dataset with the shared backbone.

    Every process trains through the same loop (Adam, EMA, gradient clipping, atomic
    checkpoints with exact resume); only its loss differs.
    """
    from physgen.cli.run import run_train
    from physgen.errors import ConfigError

    options = parse_pairs(process_options, "--option")
    if teacher is not None:
        options["teacher"] = teacher
    if reflow_from is not None and "pairs" in options:
        raise ConfigError("--reflow-from writes the pair file itself; drop -o pairs=...")
    source = Path(reflow_from).parent.name if reflow_from else Path(dataset).stem
    out_dir = Path(out or f"runs/{process}-{source}")
    checkpoint = out_dir / "checkpoint.safetensors"
    if resume and not checkpoint.exists():
        raise ConfigError(f"--resume: no checkpoint in {out_dir}")
    if not resume:
        check_new(checkpoint, overwrite)
    run_train(
        out_dir=out_dir,
        process_name=process,
        process_options=options,
        dataset=dataset,
        n_data=n_data,
        data_options=parse_pairs(data_options, "--data-opt"),
        reflow=(reflow_from, reflow_pairs or n_data, reflow_sampler) if reflow_from else None,
        network=network,
        net_options=parse_pairs(net_options, "--net-opt"),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        ema=ema,
        grad_clip=grad_clip,
        checkpoint_every=checkpoint_every,
        resume=resume,
        overwrite=overwrite,
        seed=seed,
        device=resolve_device(device),
        progress=not quiet,
        config=option_params(ctx),
        command=command_line(),
        class_cond=class_cond,
        label_dropout=label_dropout,
        latent=latent,
        precision=precision,
        compile=compile_,
        channels_last=channels_last,
        shards=shards,
    )
