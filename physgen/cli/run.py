"""What the CLI commands do, in library calls: build, train/sample, write the run file + PNG."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import torch

from physgen.api import get_network, get_process, load_checkpoint
from physgen.cli.plots import plot_curves, plot_image_grid, plot_samples
from physgen.core.rng import derive_seed
from physgen.data import load_dataset
from physgen.io import RunWriter, add_metrics, read_checkpoint_meta
from physgen.io.outputs import check_writable, claim_outputs
from physgen.registry import process_view


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


def run_sample(
    *,
    checkpoint: Path,
    out_path: Path | None,
    sampler: str | None,
    steps: int,
    n: int,
    sampler_options: dict[str, str],
    schedule: str | None = None,
    schedule_options: dict[str, str] | None = None,
    batch_size: int,
    metrics: bool,
    nll: int,
    seed: int,
    device: torch.device,
    progress: bool,
    overwrite: bool,
    straightness: int = 0,
    config: dict[str, Any],
    command: str,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    class_label: int | None = None,
    clip_denoised: float = 0.0,
) -> None:
    from physgen.sampling import resolve_sampler

    started = datetime.now(timezone.utc)  # the run file is written after the work
    ckpt = load_checkpoint(checkpoint, device=device)
    sampler = sampler or ckpt.process.default_sampler
    spec = resolve_sampler(ckpt.process, sampler)  # fail before any work
    options = spec.parse_options(sampler_options)
    # An adaptive solver picks its own steps: its run reports the NFE alone.
    grid_text = "adaptive steps" if spec.adaptive else f"{steps} steps"
    if out_path is None:
        name = f"samples-{sampler}.h5" if spec.adaptive else f"samples-{sampler}-{steps}.h5"
        out_path = checkpoint.parent / name
    if nll:
        _check_nll(ckpt)  # refused before any work, not after the samples are written
    outputs = [out_path, out_path.with_suffix(".png")]
    with claim_outputs(out_path, outputs, overwrite=overwrite, command=command):
        _draw(
            ckpt, spec, options, grid_text, checkpoint=checkpoint, out_path=out_path,
            sampler=sampler, steps=steps, n=n, schedule=schedule,
            schedule_options=schedule_options, batch_size=batch_size, metrics=metrics,
            nll=nll, seed=seed, device=device, progress=progress, overwrite=overwrite,
            straightness=straightness, config=config, command=command, guidance=guidance,
            guidance_interval=guidance_interval, class_label=class_label,
            clip_denoised=clip_denoised, started=started,
        )  # fmt: skip


def _draw(
    ckpt: Any, spec: Any, options: dict[str, Any], grid_text: str, *, checkpoint: Path,
    out_path: Path, sampler: str, steps: int, n: int, schedule: str | None,
    schedule_options: dict[str, str] | None, batch_size: int, metrics: bool, nll: int,
    seed: int, device: torch.device, progress: bool, overwrite: bool, straightness: int,
    config: dict[str, Any], command: str, guidance: float,
    guidance_interval: tuple[float, float] | None, class_label: int | None,
    clip_denoised: float, started: datetime,
) -> None:  # fmt: skip
    """Sample, then publish in an order that loses nothing: the plot (validated, cheap) and
    the samples are written before the metrics run; metrics are added to the file last."""
    from physgen.sampling import sample

    cond = _sample_labels(ckpt, n, guidance, class_label)
    with click.progressbar(
        length=n, label=f"sampling ({sampler}, {grid_text})", hidden=not progress, file=None
    ) as bar:
        result = sample(
            ckpt.process,
            ckpt.ema,
            ckpt.event_shape,
            n=n,
            sampler=sampler,
            steps=steps,
            seed=seed,
            batch_size=batch_size,
            device=device,
            options=options,
            on_batch=bar.update,
            schedule=schedule,
            schedule_options=schedule_options,
            cond=cond,
            guidance=guidance,
            guidance_interval=guidance_interval,
            clip_denoised=clip_denoised,
        )
    x = result.x.float().cpu()
    if ckpt.latent is not None:  # latent mode: decode to data space
        x = _decode(ckpt.latent, result.x, batch_size).float().cpu()
    finite = torch.isfinite(x.flatten(1)).all(1)
    bad = int((~finite).sum())
    if bad:
        click.echo(f"warning: {bad} of {n} samples are not finite; left out of plot and metrics")
    xf = x[finite]
    m = min(len(xf), METRICS_MAX_N)  # metrics on a bounded subset (first m), recorded
    reference = _reference(ckpt.meta, m, seed) if metrics and m > 1 else None
    png = out_path.with_suffix(".png")
    if x.ndim == 4:  # images: a grid of the first 64 finite ones
        plot_image_grid(png, xf[:64].numpy(), overwrite=overwrite)
    else:
        plot_samples(
            png,
            xf.numpy(),
            reference=None if reference is None else reference.numpy(),
            title=f"{ckpt.process_name} · {sampler} · {grid_text} · NFE {result.nfe}",
            overwrite=overwrite,
        )
    with RunWriter(
        out_path, config=config, seed=seed, device=device, command=command, overwrite=overwrite,
        started=started,
    ) as run:  # fmt: skip
        run.add_samples(
            "samples",
            x,
            labels=cond,
            process=ckpt.process_name,
            sampler=sampler,
            **({} if spec.adaptive else {"steps": steps}),
            nfe=result.nfe,
            seed=seed,
            wall_seconds=result.wall_seconds,
            checkpoint=str(checkpoint),
            nonfinite=bad,
        )
    scores: dict[str, float] = {}
    if reference is not None:
        scores.update(_set_metrics(ckpt, spec, xf[:m], reference, seed, device, batch_size))
    if nll:
        scores.update(_nll(ckpt, nll, seed, device, progress))
    if straightness and "ode" in ckpt.process.views():
        k = min(straightness, n)
        labels = None if cond is None else cond[:k]
        scores["straightness"] = _straightness(
            ckpt, k, seed, device, labels, guidance, guidance_interval
        )
    if scores:
        add_metrics(out_path, {**scores, "metrics_n": m} if reference is not None else scores)
    line = f"{n} samples, {sampler}, {grid_text}, NFE {result.nfe}, {result.wall_seconds:.2f} s"
    if scores:
        line += "; " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    if reference is not None and m < n:
        line += f" (metrics on the first {m} finite samples)"
    click.echo(f"{line}\nrun file: {out_path}\nplot:     {png}")


#: the sample-set metrics of ``physgen sample`` use at most this many samples (the first ones):
#: MMD is quadratic in time, so a bound keeps every run's metrics in seconds and bounded memory
METRICS_MAX_N = 10_000


def _set_metrics(
    ckpt: Any, spec: Any, x: torch.Tensor, reference: torch.Tensor, seed: int,
    device: torch.device, batch_size: int,
) -> dict[str, float]:  # fmt: skip
    """Sliced W2 and MMD² of ``x`` against ``reference``, and the prior's sliced W2."""
    from physgen.registry import get_registry

    reg = get_registry()
    gen = torch.Generator().manual_seed(seed)
    scores = {name: float(reg.metric(name).fn(x, reference, generator=gen))
              for name in ("sliced_w2", "mmd2_unbiased")}  # fmt: skip
    prior = process_view(ckpt.process, spec.view, ckpt.ema).prior(
        (len(x), *ckpt.event_shape),
        generator=torch.Generator().manual_seed(derive_seed(seed, "prior")),
    )
    if ckpt.latent is not None:
        prior = _decode(ckpt.latent, prior.to(device), batch_size).float().cpu()
    scores["sliced_w2_prior"] = float(reg.metric("sliced_w2").fn(prior, reference))
    return scores


def _sample_labels(
    ckpt: Any, n: int, guidance: float, class_label: int | None
) -> torch.Tensor | None:
    """Class labels for a conditional checkpoint: ``class_label`` for all, else 0, 1, …, K−1
    cycling; None for an unconditional one (guidance then is an error). Guidance (w ≠ 1)
    also needs the unconditional model, which only label dropout trains (Ho & Salimans 2022,
    Algorithm 1): a checkpoint trained without it is refused."""
    from physgen.errors import ConfigError

    k = ckpt.num_classes
    if k == 0:
        if guidance != 1.0:
            raise ConfigError(
                f"--guidance {guidance:g}: the checkpoint is unconditional; classifier-free "
                "guidance needs a model trained with --label-dropout (e.g. 0.1)"
            )
        if class_label is not None:
            raise ConfigError("--class needs a class-conditional checkpoint")
        return None
    if guidance != 1.0 and ckpt.meta.get("train", {}).get("label_dropout", 1.0) == 0:
        raise ConfigError(
            f"--guidance {guidance:g}: the checkpoint was trained without label dropout, so it "
            "has no unconditional model to guide with; train with --label-dropout (e.g. 0.1)"
        )
    if class_label is not None and not 0 <= class_label < k:
        raise ConfigError(f"--class must be in [0, {k - 1}], got {class_label}")
    if class_label is not None:
        return torch.full((n,), class_label, dtype=torch.long)
    return torch.arange(n) % k


@torch.no_grad()
def _decode(codec: Any, z: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([codec.decode(z[i : i + batch_size]) for i in range(0, len(z), batch_size)])


def _check_nll(ckpt: Any) -> Any:
    """The ode view ``--nll`` integrates, or a one-line refusal (checked before any work)."""
    from physgen.errors import ConfigError

    if ckpt.latent is not None:
        raise ConfigError(
            "--nll: a latent-mode model has no data-space likelihood (its autoencoder is not "
            "invertible, so the ODE's density is over latents)"
        )
    if "ode" not in ckpt.process.views():
        raise ConfigError(f"--nll: process {ckpt.process_name!r} has no ode view")
    view = process_view(ckpt.process, "ode", ckpt.ema)
    if view.prior_logp is None:
        raise ConfigError(f"--nll: process {ckpt.process_name!r} has no prior density")
    return view


def _nll(ckpt: Any, n: int, seed: int, device: torch.device, progress: bool) -> dict[str, float]:
    """Exact NLL of ``n`` fresh data points under the checkpoint's PF-ODE (docs/math.md §1)."""
    from physgen.errors import ConfigError
    from physgen.metrics.nll import nll

    view = _check_nll(ckpt)
    data = _reference(ckpt.meta, n, derive_seed(seed, "nll"))
    if data is None:
        raise ConfigError("--nll needs the checkpoint's dataset to draw fresh points from")
    return nll(view, data.to(device), divergence="exact", progress=progress).as_dict()


def _straightness(
    ckpt: Any,
    n: int,
    seed: int,
    device: torch.device,
    cond: torch.Tensor | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
) -> float:
    """Straightness of the model's own ODE (Liu et al. 2023), in the flow-matching frame of
    :func:`~physgen.sampling.reflow.straightness`, from the prior draws of the first ``n``
    samples (same per-sample generators, same labels and guidance), RK4 on 64 steps."""
    import dataclasses

    from physgen.core.rng import StackedGenerator
    from physgen.sampling.guidance import GuidedNet
    from physgen.sampling.reflow import straightness

    guided = GuidedNet(ckpt.ema, guidance, guidance_interval)
    view = process_view(ckpt.process, "ode", guided, None if cond is None else cond.to(device))
    view = dataclasses.replace(view, field=guided.timed(view.field))
    gen = StackedGenerator.for_samples(seed, 0, n, device)
    x0 = view.prior((n, *ckpt.event_shape), generator=gen, device=device, dtype=torch.float32)
    with torch.no_grad():
        return straightness(view, x0, steps=64)


def _reference_name(meta: dict[str, Any]) -> str | None:
    """The dataset a model's samples are compared with: its own, or its teacher's (reflow)."""
    dataset = meta.get("dataset", {})
    return dataset.get("reference") or dataset.get("name")


def _reference(meta: dict[str, Any], n: int, seed: int) -> torch.Tensor | None:
    """Fresh data for metrics: a built-in dataset redrawn with another seed, else the file."""
    from physgen.errors import PhysgenError

    name = _reference_name(meta)
    if not name:
        return None
    try:
        data = load_dataset(name, n, seed=derive_seed(seed, "reference"))
    except PhysgenError:
        return None
    return data.x.float()


def describe_plugins(kind: str | None) -> str:
    """The text of ``physgen plugins``."""
    from physgen.registry import KINDS, get_registry
    from physgen.sampling import describe_views

    reg = get_registry()
    lines: list[str] = []
    if kind in (None, "plugins"):
        lines.append("plugins:")
        for p in reg.plugins:
            status = "ok" if p.ok else f"BROKEN: {p.reason}"
            lines.append(f"  {p.name:<14} {p.package:<22} {status}")
    for k in KINDS:
        if kind not in (None, k):
            continue
        lines.append(f"{k}:")
        for entry, plugin in reg.items(k):
            head = f"  {entry.name:<14} {entry.description}  [{plugin.name}]"
            lines.append(head)
            if k == "processes":
                lines.append(f"      views: {describe_views(entry.cls)}")
                lines.extend(_option_lines(entry.cls.Options))
            elif k == "samplers":
                order = "no order" if entry.order is None else f"order {entry.order:g}"
                order += ", adaptive" if entry.adaptive else ""
                kind_ = "stochastic" if entry.stochastic else "deterministic"
                lines.append(f"      needs view: {entry.view}; {order}; {kind_}")
                if entry.options:
                    opts = ", ".join(f"{a}={b}" for a, b in entry.options.items())
                    lines.append(f"      options: {opts}")
            elif k == "networks" and getattr(entry, "config", None):
                opts = ", ".join(f"{a}={b}" for a, b in entry.config.items())
                lines.append(f"      options: {opts}")
        for name, claimants in reg.conflicts(k).items():
            who = " and ".join(f"{p.name} ({p.package})" for p in claimants)
            lines.append(f"  {name:<14} CONFLICT: claimed by {who}; unavailable")
    return "\n".join(lines)


def _option_lines(options_cls: type) -> list[str]:
    from physgen.core.process import option_docs

    docs = option_docs(options_cls)
    out = []
    for f in dataclasses.fields(options_cls):
        doc = docs.get(f.name, "")
        out.append(f"      -o {f.name}={f.default}" + (f"   # {doc}" if doc else ""))
    return out
