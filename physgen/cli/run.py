"""What the CLI commands do, in library calls: build, train/sample, write the run file + PNG."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import torch

from physgen.api import get_network, get_process, load_checkpoint
from physgen.cli.plots import plot_curves, plot_image_grid, plot_samples
from physgen.data import load_dataset
from physgen.io import RunWriter, read_checkpoint_meta


def run_train(run: Any, cfg: Any, ctx: click.Context) -> None:
    """``physgen train``: ``run`` is a :class:`physgen.cli.train.TrainRun`, ``cfg`` the
    loop's :class:`physgen.training.TrainConfig`."""
    from physgen.cli._common import (
        check_new,
        command_line,
        option_params,
        parse_pairs,
        resolve_device,
    )
    from physgen.errors import ConfigError
    from physgen.training import TrainingInterrupted, describe, train
    from physgen.training.distributed import init_distributed
    from physgen.training.latent import resolve_latent

    # Validate everything cheap before any work: names, options, files, data.
    process_options = parse_pairs(run.process_options, "--option")
    if run.teacher is not None:
        process_options["teacher"] = run.teacher
    if run.reflow_from is not None and "pairs" in process_options:
        raise ConfigError("--reflow-from writes the pair file itself; drop -o pairs=...")
    source = Path(run.reflow_from).parent.name if run.reflow_from else Path(run.dataset).stem
    out_dir = Path(run.out or f"runs/{run.process}-{source}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out: Directory {str(out_dir)!r} is a file")
    checkpoint = out_dir / "checkpoint.safetensors"
    if run.resume and not checkpoint.exists():
        raise ConfigError(f"--resume: no checkpoint in {out_dir}")
    if not run.resume:
        check_new(checkpoint, run.overwrite)
    device = resolve_device(run.device)
    seed, dataset, n_data = cfg.seed, run.dataset, run.n_data
    data_options = parse_pairs(run.data_options, "--data-opt")
    process = get_process(run.process, **process_options)
    if run.reflow_from is not None:
        reflow = (run.reflow_from, run.reflow_pairs or n_data, run.reflow_sampler)
        pairs = _reflow_pairs(process, out_dir, *reflow, resume=run.resume, seed=seed,
                              device=device)  # fmt: skip
        dataset = str(pairs)
        process = get_process(run.process, **{**process_options, "pairs": dataset})
    data = load_dataset(dataset, n_data, seed=seed, **data_options)
    info, device = init_distributed(device)  # torchrun: join the job, one device per rank
    # Unconditional: class-conditional training (with label dropout for guidance) is opt-in.
    conditional = run.class_cond or cfg.label_dropout > 0
    num_classes = data.num_classes if conditional else 0
    if conditional and not num_classes:
        raise ConfigError(f"--class-cond/--label-dropout: dataset {data.name!r} has no labels")
    codec = None
    if run.latent is not None:
        codec = resolve_latent(run.latent, data, checkpoint if run.resume else None, seed, device)
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
        overwrite=True,
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


def _reflow_pairs(
    process: Any, out_dir: Path, teacher: str, n: int, sampler: str, *, resume: bool, seed: int,
    device: torch.device,
) -> Path:  # fmt: skip
    """The run's reflow pair file (Liu et al. 2023): ``n`` pairs ``(z, ODE(z))`` from the
    ``teacher`` checkpoint, written once; a resumed run trains on the file it already has."""
    from physgen.errors import ConfigError
    from physgen.sampling.reflow import PAIRS_SEED_OFFSET, reflow_dataset

    if "pairs" not in process.options_dict():
        raise ConfigError(
            f"--reflow-from: process {process.registry_name!r} does not train on reflow pairs "
            "(it has no 'pairs' option; use e.g. --process rectified)"
        )
    path = out_dir / "reflow_pairs.npz"
    if resume and path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    seed += PAIRS_SEED_OFFSET  # a stream apart from the student's training noise
    reflow_dataset(teacher, n, sampler=sampler, seed=seed, out_path=path, device=device)
    click.echo(f"reflow: {n} pairs from {teacher} ({sampler}) -> {path}")
    return path


def run_sample(
    *,
    checkpoint: Path,
    out_path: Path,
    sampler: str,
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
) -> None:
    from physgen.registry import get_registry
    from physgen.sampling import resolve_sampler, sample

    ckpt = load_checkpoint(checkpoint, device=device)
    spec = resolve_sampler(ckpt.process, sampler)  # fail before any work
    options = _sampler_options(spec, sampler, sampler_options)
    with click.progressbar(
        length=n, label=f"sampling ({sampler}, {steps} steps)", hidden=not progress, file=None
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
            cond=_sample_labels(ckpt, n, guidance, class_label),
            guidance=guidance,
            guidance_interval=guidance_interval,
        )
    x = result.x.float().cpu()
    if ckpt.latent is not None:  # latent mode: decode to data space
        x = _decode(ckpt.latent, result.x, batch_size).float().cpu()
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        click.echo(f"warning: {bad} of {n} samples are not finite", err=True)
    scores: dict[str, float] = {}
    reference = None
    if metrics:
        reference = _reference(ckpt.meta, n, seed)
        if reference is not None:
            reg = get_registry()
            gen = torch.Generator().manual_seed(seed)
            for name in ("sliced_w2", "mmd"):
                fn = reg.metric(name).fn
                scores[name] = float(fn(x, reference, generator=gen))
            prior = ckpt.process.view(spec.view, ckpt.ema).prior(
                (n, *ckpt.event_shape), generator=torch.Generator().manual_seed(seed + 1)
            )
            if ckpt.latent is not None:
                prior = _decode(ckpt.latent, prior.to(device), batch_size).float().cpu()
            scores["sliced_w2_prior"] = float(reg.metric("sliced_w2").fn(prior, reference))
    if nll:
        scores.update(_nll(ckpt, nll, seed, device))
    if straightness and "ode" in ckpt.process.views():
        scores["straightness"] = _straightness(ckpt, min(straightness, n), seed, device)
    with RunWriter(
        out_path, config=config, seed=seed, device=device, command=command, overwrite=overwrite
    ) as run:
        run.add_samples(
            "samples",
            x,
            process=ckpt.process_name,
            sampler=sampler,
            steps=steps,
            nfe=result.nfe,
            seed=seed,
            wall_seconds=result.wall_seconds,
            checkpoint=str(checkpoint),
        )
        for name, value in scores.items():
            run.add_metric(name, value)
    png = out_path.with_suffix(".png")
    if x.ndim == 4:  # images: a grid of the first 64
        plot_image_grid(png, x[:64].numpy())
    else:
        plot_samples(
            png,
            x.numpy(),
            reference=None if reference is None else reference.numpy(),
            title=f"{ckpt.process_name} · {sampler} · {steps} steps · NFE {result.nfe}",
        )
    line = f"{n} samples, {sampler}, {steps} steps, NFE {result.nfe}, {result.wall_seconds:.2f} s"
    if scores:
        line += "; " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    click.echo(f"{line}\nrun file: {out_path}\nplot:     {png}")


def _sample_labels(
    ckpt: Any, n: int, guidance: float, class_label: int | None
) -> torch.Tensor | None:
    """Class labels for a conditional checkpoint: ``class_label`` for all, else 0, 1, …, K−1
    cycling; None for an unconditional one (guidance then is an error)."""
    from physgen.errors import ConfigError

    k = ckpt.num_classes
    if k == 0:
        if guidance != 1.0 or class_label is not None:
            raise ConfigError("--guidance/--class need a class-conditional checkpoint")
        return None
    if class_label is not None and not 0 <= class_label < k:
        raise ConfigError(f"--class must be in [0, {k - 1}], got {class_label}")
    if class_label is not None:
        return torch.full((n,), class_label, dtype=torch.long)
    return torch.arange(n) % k


@torch.no_grad()
def _decode(codec: Any, z: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([codec.decode(z[i : i + batch_size]) for i in range(0, len(z), batch_size)])


def _nll(ckpt: Any, n: int, seed: int, device: torch.device) -> dict[str, float]:
    """Exact NLL of ``n`` fresh data points under the checkpoint's PF-ODE (math.md §1)."""
    from physgen.errors import ConfigError
    from physgen.metrics.nll import nll

    if ckpt.latent is not None:
        raise ConfigError(
            "--nll: a latent-mode model has no data-space likelihood (its autoencoder is not "
            "invertible, so the ODE's density is over latents)"
        )
    data = _reference(ckpt.meta, n, seed + 1)
    if data is None:
        raise ConfigError("--nll needs the checkpoint's dataset to draw fresh points from")
    view = ckpt.process.view("ode", ckpt.ema)
    if view.prior_logp is None:
        raise ConfigError(f"--nll: process {ckpt.process_name!r} has no prior density")
    return nll(view, data.to(device), divergence="exact").as_dict()


def _straightness(ckpt: Any, n: int, seed: int, device: torch.device) -> float:
    """Straightness of the model's own ODE (Liu et al. 2023) from the prior draws of the
    first ``n`` samples (same per-sample generators), RK4 on 64 steps of its grid."""
    from physgen.core.rng import StackedGenerator
    from physgen.sampling.reflow import straightness

    view = ckpt.process.view("ode", ckpt.ema)
    gen = StackedGenerator.for_samples(seed, 0, n, device)
    x0 = view.prior((n, *ckpt.event_shape), generator=gen, device=device, dtype=torch.float32)
    with torch.no_grad():
        return straightness(view, x0, steps=64)


def _sampler_options(spec: Any, name: str, raw: dict[str, str]) -> dict[str, Any]:
    from physgen.core.process import convert_value
    from physgen.errors import ConfigError

    out = {}
    for key, value in raw.items():
        if key not in spec.options:
            known = ", ".join(spec.options) or "none"
            raise ConfigError(f"sampler {name!r} has no option {key!r} (options: {known})")
        out[key] = convert_value(value, spec.options[key], name=key, owner=f"sampler {name!r}")
    return out


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
        data = load_dataset(name, n, seed=seed + 10_007)
    except PhysgenError:
        return None
    return data.x.float()


def describe_plugins(kind: str | None) -> str:
    """The text of ``physgen plugins``."""
    from physgen.core.process import VIEWS
    from physgen.registry import KINDS, get_registry

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
                views = ", ".join(v for v in VIEWS if v in entry.cls.views())
                lines.append(f"      views: {views}")
                lines.extend(_option_lines(entry.cls.Options))
            elif k == "samplers":
                order = "adaptive" if entry.order is None else f"order {entry.order:g}"
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
