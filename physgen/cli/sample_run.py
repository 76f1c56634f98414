"""What ``physgen sample`` does, in library calls: load the checkpoint, draw, write the run
file, then the metrics and the PNG."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import torch

from physgen.api import load_checkpoint
from physgen.cli.plots import plot_image_grid, plot_samples
from physgen.core.rng import derive_seed
from physgen.data import load_dataset
from physgen.io import RunWriter, add_metrics
from physgen.io.outputs import claim_outputs
from physgen.registry import process_view


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
    ema_length: float | None = None,
    guide_with: Path | None = None,
) -> None:
    from physgen.sampling import resolve_sampler

    started = datetime.now(timezone.utc)  # the run file is written after the work
    ckpt = load_checkpoint(checkpoint, device=device)
    guide = _guide(ckpt, guide_with, device) if guide_with is not None else None
    if ema_length is not None:
        ckpt = _with_ema_length(ckpt, ema_length)
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
            clip_denoised=clip_denoised, started=started, guide=guide,
        )  # fmt: skip


def _draw(
    ckpt: Any, spec: Any, options: dict[str, Any], grid_text: str, *, checkpoint: Path,
    out_path: Path, sampler: str, steps: int, n: int, schedule: str | None,
    schedule_options: dict[str, str] | None, batch_size: int, metrics: bool, nll: int,
    seed: int, device: torch.device, progress: bool, overwrite: bool, straightness: int,
    config: dict[str, Any], command: str, guidance: float,
    guidance_interval: tuple[float, float] | None, class_label: int | None,
    clip_denoised: float, started: datetime, guide: Any = None,
) -> None:  # fmt: skip
    """Sample, then publish in an order that loses nothing: the plot (validated, cheap) and
    the samples are written before the metrics run; metrics are added to the file last."""
    from physgen.sampling import sample

    # autoguidance needs no unconditional model: the label checks are those of w = 1
    cond = _sample_labels(ckpt, n, guidance if guide is None else 1.0, class_label)
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
            guide=None if guide is None else guide.ema,
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
            **_model_attrs(ckpt, guide),
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
            ckpt, k, seed, device, labels, guidance, guidance_interval,
            None if guide is None else guide.ema,
        )  # fmt: skip
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
    guide: Any = None,
) -> float:
    """Straightness of the model's own ODE (Liu et al. 2023), in the flow-matching frame of
    :func:`~physgen.sampling.reflow.straightness`, from the prior draws of the first ``n``
    samples (same per-sample generators, same labels and guidance), RK4 on 64 steps."""

    from physgen.core.rng import StackedGenerator
    from physgen.sampling.guidance import GuidedNet
    from physgen.sampling.reflow import straightness

    guided = GuidedNet(ckpt.ema, guidance, guidance_interval, guide=guide)
    view = process_view(ckpt.process, "ode", guided, None if cond is None else cond.to(device))
    view = dataclasses.replace(view, field=guided.timed(view.field))
    gen = StackedGenerator.for_samples(seed, 0, n, device)
    x0 = view.prior((n, *ckpt.event_shape), generator=gen, device=device, dtype=torch.float32)
    with torch.no_grad():
        return straightness(view, x0, steps=64)


def _with_ema_length(ckpt: Any, sigma_rel: float) -> Any:
    """``ckpt`` sampling with the EMA of length ``sigma_rel`` (tracked, else post-hoc)."""
    from physgen.training.posthoc import ema_for_length

    net, profile = ema_for_length(ckpt, sigma_rel)
    how = (
        f"tracked, step {profile.step}"
        if profile.source == "tracked"
        else f"post-hoc from {len(set(profile.snapshot_steps))} snapshots, step {profile.step}"
    )
    click.echo(f"EMA σ_rel {sigma_rel:g}: {how}")
    ckpt = dataclasses.replace(ckpt, ema=net)
    ckpt.meta = {**ckpt.meta, "ema_profile": dataclasses.asdict(profile)}
    return ckpt


def _guide(ckpt: Any, path: Path, device: torch.device) -> Any:
    """The guiding checkpoint of autoguidance, checked against the model (one line)."""
    from physgen.sampling.guidance import check_guide

    guide = load_checkpoint(path, device=device)
    check_guide(ckpt, guide)
    return guide


def _model_attrs(ckpt: Any, guide: Any) -> dict[str, Any]:
    """Run-file attributes naming the EMA profile and the guiding checkpoint, when used."""
    out: dict[str, Any] = {}
    profile = ckpt.meta.get("ema_profile")
    if profile is not None:
        out.update(ema_length=profile["sigma_rel"], ema_source=profile["source"],
                   ema_step=profile["step"])  # fmt: skip
    if guide is not None:
        out.update(guide_with=str(guide.path), guide_step=guide.step)
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
        data = load_dataset(name, n, seed=derive_seed(seed, "reference"))
    except PhysgenError:
        return None
    return data.x.float()
