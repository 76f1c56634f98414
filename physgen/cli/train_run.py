"""What ``physgen train`` does, in library calls: claim the run directory, build the
process, network and data, train, write the run file and the loss plot."""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import torch

from physgen.api import get_network, get_process
from physgen.cli.plots import plot_curves
from physgen.cli.sample_run import _reference_name
from physgen.core.rng import derive_seed
from physgen.data import load_dataset
from physgen.io import RunWriter, read_checkpoint_meta
from physgen.io.outputs import check_writable, claim_outputs


def run_train(run: Any, cfg: Any, ctx: click.Context) -> None:
    """``physgen train``: ``run`` is a :class:`physgen.cli.train.TrainRun`, ``cfg`` the
    loop's :class:`physgen.training.TrainConfig`. Every file the run writes is checked, and the
    run directory locked, before any work: a fresh run refuses an existing checkpoint, run
    file, loss plot or pair file (unless ``--overwrite``); a resumed run replaces only its own
    run file and plot."""
    from physgen.cli._common import command_line
    from physgen.errors import ConfigError

    source = Path(run.reflow_from).parent.name if run.reflow_from else Path(run.dataset).stem
    out_dir = Path(run.out or f"runs/{run.process}-{source}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out: Directory {str(out_dir)!r} is a file")
    checkpoint = out_dir / "checkpoint.safetensors"
    if run.resume and not checkpoint.exists():
        raise ConfigError(f"--resume: no checkpoint in {out_dir}")
    names = ["checkpoint.safetensors", "train.h5", "loss.png"]
    if run.reflow_from is not None:
        names.append("reflow_pairs.npz")
    outputs = [out_dir / name for name in names]
    claimed = [] if run.resume else outputs
    # Under torchrun every rank runs this; rank 0 alone claims (locks) the run directory.
    rank = int(os.environ.get("RANK", "0") or 0)
    claim = (
        claim_outputs(out_dir, claimed, overwrite=run.overwrite, command=command_line())
        if rank == 0
        else contextlib.nullcontext()
    )
    with claim:
        for path in outputs:  # a resumed run must be able to write them too
            check_writable(path)
        _run_train(run, cfg, ctx, out_dir, checkpoint)


def _run_train(run: Any, cfg: Any, ctx: click.Context, out_dir: Path, checkpoint: Path) -> None:
    from physgen.cli._common import command_line, option_params, parse_pairs, resolve_device
    from physgen.errors import ConfigError
    from physgen.training import TrainingInterrupted, describe, train
    from physgen.training.distributed import init_distributed
    from physgen.training.latent import resolve_latent

    started = datetime.now(timezone.utc)  # the run file is written after the work

    # Validate everything cheap before any work: names, options, data.
    process_options = parse_pairs(run.process_options, "--option")
    if run.teacher is not None:
        process_options["teacher"] = run.teacher
    if run.reflow_from is not None and "pairs" in process_options:
        raise ConfigError("--reflow-from writes the pair file itself; drop -o pairs=...")
    device = resolve_device(run.device)
    seed, dataset, n_data = cfg.seed, run.dataset, run.n_data
    data_options = parse_pairs(run.data_options, "--data-opt")
    process = get_process(run.process, **process_options)
    if run.reflow_from is not None:
        reflow = (run.reflow_from, run.reflow_pairs or n_data, run.reflow_sampler)
        pairs = _reflow_pairs(process, out_dir, *reflow, resume=run.resume, seed=seed,
                              device=device, progress=not run.quiet)  # fmt: skip
        dataset = str(pairs)
        process = get_process(run.process, **{**process_options, "pairs": dataset})
    if n_data == "stream":  # fresh draws, or lazy reads, each step from (seed, step)
        if run.reflow_from is not None or run.latent is not None:
            raise ConfigError("--n-data stream does not combine with --reflow-from or --latent")
        data: Any = _streamed(dataset, data_options)
    else:
        data = load_dataset(dataset, n_data, seed=seed, **data_options)
    if n_data != "stream":
        _check_teacher_shape(process, data)
    info, device = init_distributed(device)  # torchrun: join the job, one device per rank
    # Unconditional: class-conditional training (with label dropout for guidance) is opt-in.
    conditional = run.class_cond or cfg.label_dropout > 0
    num_classes = data.num_classes if conditional else 0
    if conditional and not num_classes:
        raise ConfigError(f"--class-cond/--label-dropout: dataset {data.name!r} has no labels")
    codec = None
    if run.latent is not None:
        resume_from, show = (checkpoint if run.resume else None), not run.quiet and info.is_main
        codec = resolve_latent(run.latent, data, resume_from, seed, device, progress=show)
    shape = codec.latent_shape if codec is not None else data.event_shape
    # The backbone that fits the data: images [C, H, W] or vectors.
    network = run.network or ("unet" if len(shape) == 3 else "mlp")
    net_options = parse_pairs(run.net_options, "--net-opt")
    net = get_network(network, shape, num_classes, seed=seed, process=process, **net_options)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_path = out_dir / "train.h5"
    meta = describe(process, net, data)
    meta["dataset"]["options"] = data_options  # a resumed run must load the same data
    if run.reflow_from is not None:  # metrics compare a reflowed model with the teacher's data
        meta["dataset"]["reference"] = _reference_name(read_checkpoint_meta(run.reflow_from))
    try:
        result = train(
            process, net.to(device), data, cfg, device=device, checkpoint=checkpoint,
            resume=run.resume, overwrite=run.overwrite, meta=meta, progress=not run.quiet,
            latent=codec,
        )  # fmt: skip
    except TrainingInterrupted as stop:
        where = "checkpoint saved" if stop.checkpoint else "no checkpoint yet"
        click.echo(f"interrupted at step {stop.step}; {where}, resume with --resume", err=True)
        ctx.exit(130)
    if not info.is_main:  # rank 0 writes the run file and plots
        return
    with RunWriter(
        run_path, config=option_params(ctx), seed=seed, device=device, command=command_line(),
        overwrite=True, started=started,
    ) as writer:  # fmt: skip
        writer.add_curve("loss", result.losses)
        for name, curve in _scalar_curves(result).items():
            writer.add_curve(name, curve)
        writer.add_metric("steps_per_second", result.steps / max(result.wall_seconds, 1e-9))
        writer.add_metric("final_loss", float(result.losses[-100:].mean()))
        writer.set_attrs(
            process=run.process,
            dataset=data.name,
            network=network,
            wall_seconds=result.wall_seconds,
        )
    name = run.process
    plot_curves(out_dir / "loss.png", {"loss": result.losses}, title=f"{name} on {data.name}")
    click.echo(
        f"trained {name} on {data.name} for {result.steps} steps in "
        f"{result.wall_seconds:.1f} s ({result.steps / max(result.wall_seconds, 1e-9):.0f} "
        f"steps/s); final loss {float(result.losses[-100:].mean()):.4g}\n"
        f"checkpoint: {checkpoint}\nrun file:   {run_path}\nloss plot:  {out_dir / 'loss.png'}"
    )


def _scalar_curves(result: Any) -> dict[str, Any]:
    """The per-step gradient norm and learning rate, and (step, steps/s) at each log flush of
    this call: ``/metrics/curves/<name>`` in train.h5 beside the loss."""
    curves = {"grad_norm": result.grad_norms, "lr": result.lrs}
    curves["steps_per_second"] = result.steps_per_second
    return {k: v for k, v in curves.items() if v is not None}


def _check_teacher_shape(process: Any, data: Any) -> None:
    """A distillation teacher must have been trained on data of this run's shape."""
    from physgen.errors import ConfigError

    teacher = process.options_dict().get("teacher")
    if not isinstance(teacher, str) or not teacher.endswith(".safetensors"):
        return
    shape = read_checkpoint_meta(teacher).get("dataset", {}).get("event_shape")
    if shape is not None and tuple(shape) != tuple(data.event_shape):
        raise ConfigError(
            f"--teacher {teacher} was trained on data of shape {tuple(shape)}, this run's "
            f"dataset {data.name!r} has shape {tuple(data.event_shape)}"
        )


def _streamed(dataset: str, options: dict[str, str]) -> Any:
    """``--n-data stream``: the dataset as a :class:`physgen.data.loader.Streamed` (the data
    options ``flip`` and ``crop`` become on-the-fly augmentation)."""
    from physgen.core.process import convert_value
    from physgen.data.loader import Streamed

    opts: dict[str, Any] = dict(options)
    flip = convert_value(opts.pop("flip", False), False, name="flip", owner="--data-opt")
    crop = convert_value(opts.pop("crop", 0), 0, name="crop", owner="--data-opt")
    return Streamed(dataset, opts, flip=flip, crop=crop or None)


def _reflow_pairs(
    process: Any, out_dir: Path, teacher: str, n: int, sampler: str, *, resume: bool, seed: int,
    device: torch.device, progress: bool,
) -> Path:  # fmt: skip
    """The run's reflow pair file (Liu et al. 2023): ``n`` pairs ``(z, ODE(z))`` from the
    ``teacher`` checkpoint, written once; a resumed run trains on the file it already has."""
    from physgen.errors import ConfigError
    from physgen.sampling.reflow import PAIRS_STREAM, reflow_dataset

    if "pairs" not in process.options_dict():
        raise ConfigError(
            f"--reflow-from: process {process.registry_name!r} does not train on reflow pairs "
            "(it has no 'pairs' option; use e.g. --process rectified)"
        )
    path = out_dir / "reflow_pairs.npz"
    if resume and path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = derive_seed(seed, PAIRS_STREAM)  # a stream apart from the student's training noise
    reflow_dataset(
        teacher, n, sampler=sampler, seed=seed, out_path=path, device=device, progress=progress
    )
    click.echo(f"reflow: {n} pairs from {teacher} ({sampler}) -> {path}")
    return path
