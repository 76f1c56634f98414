"""The process-agnostic training loop, top to bottom: :func:`train`.

One step draws ``batch_size`` indices with replacement from the data generator, asks the
process for the per-example loss (its noise from the shard's own generator), takes the mean,
clips the gradient norm, steps Adam, updates the EMA and calls ``process.after_step``. Every
random draw is a function of (seed, shard, step) (:mod:`physgen.training.seeding`), and the
weights, EMA, optimizer, process state and generator states are the whole training state
(:mod:`physgen.training.state`): a run interrupted at step k and resumed from its checkpoint
reproduces the uninterrupted loss curve bitwise on the CPU, dropout included.

The loop never syncs with the device per step: losses stay on the device and are copied to the
host every ``log_every`` steps (and before every checkpoint), where they are checked for
non-finite values, so a checkpoint only holds states whose losses were all finite. Checkpoints
are written atomically and only at clean step boundaries: Ctrl-C sets a flag the loop reads
between steps (a second Ctrl-C during a step waits for its end), and an interruption that does
land inside a step (no handler installed) keeps the last checkpoint instead of saving a
half-updated state.

Adam is the fused implementation where torch has one for the device, its learning rate set
before each step from :func:`physgen.training.schedule.lr_at` (warm-up, then constant, cosine
or inverse-square-root decay). The EMA is :func:`physgen.core.ema.ema_update` with the
warm-up decay ``min(decay, (1 + k)/(10 + k))``; ``ema_lengths`` adds power-function EMAs
(EDM2 eq. 127) and ``ema_snapshot_every`` their snapshots for post-hoc EMA
(:mod:`physgen.training.posthoc`). Each step's loss, gradient norm (before clipping) and
learning rate are kept (and go to TensorBoard with ``tensorboard``,
:mod:`physgen.training.scalars`).
Options beyond the loop: ``label_dropout`` replaces a label by −1 ("no label") with
probability p (Ho & Salimans 2022, Algorithm 1); ``precision="bf16"`` runs the loss under
``torch.autocast``; ``compile`` trains through ``torch.compile(net)``; ``channels_last`` for
images; ``shards`` and DDP (:mod:`physgen.training.distributed`); ``latent``
(:mod:`physgen.training.latent`).
"""

from __future__ import annotations

import contextlib
import copy
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from physgen.core.ema import ema_update, power_beta, sigma_rel_to_gamma
from physgen.errors import ConfigError, TrainingError
from physgen.io.snapshots import clear_snapshots, list_snapshots, save_snapshot, snapshot_dir
from physgen.registry import plugin_call
from physgen.training.config import TrainConfig, config_from
from physgen.training.distributed import barrier, dist_info, mean_over_ranks
from physgen.training.scalars import TensorBoardLog, check_tensorboard
from physgen.training.schedule import lr_at
from physgen.training.seeding import data_seed, generator, noise_seed, seeded_global_rng
from physgen.training.state import (
    CURVES,
    TrainState,
    data_tensors,
    full_meta,
    restore_state,
    save_state,
)

__all__ = ["TrainResult", "TrainingInterrupted", "train"]


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    #: the trained network with the raw (online) weights: the object passed in, on the device
    net: nn.Module
    #: a copy of the network holding the EMA weights (what sampling uses), float32, eval mode
    ema: nn.Module
    #: float32 ``[steps]``: the mean loss of every step from step 0 (earlier runs included)
    losses: np.ndarray
    #: steps completed
    steps: int
    #: wall-clock seconds of this call
    wall_seconds: float
    #: the last checkpoint written, if any
    checkpoint: Path | None = None
    #: the options the run used (``shards`` and ``lr_tref`` resolved)
    config: TrainConfig | None = None
    #: float32 ``[steps]``: each step's gradient norm before clipping (NaN for steps of a
    #: checkpoint written before physgen kept it)
    grad_norms: np.ndarray | None = None
    #: float32 ``[steps]``: each step's learning rate
    lrs: np.ndarray | None = None
    #: float64 ``[k, 2]``: (step, steps per second) at each of this call's log flushes
    steps_per_second: np.ndarray | None = None
    #: the power-function EMA profiles (``ema_lengths``), float32, eval mode
    profiles: list[nn.Module] | None = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`train` at a clean step boundary. ``step`` is the step of the
    checkpoint on disk (``checkpoint``, None without one), from which a resume is exact."""

    def __init__(self, step: int, checkpoint: Path | None):
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint"
        super().__init__(f"interrupted at step {step}; {where}")
        self.step, self.checkpoint = step, checkpoint


class _Interrupt:
    """Ctrl-C as a flag the loop reads between steps. A second Ctrl-C outside a step raises at
    once; inside a step it waits for the step's end, so no half-updated state is ever saved.
    Installed only in the main thread, and only over Python's default SIGINT handler."""

    def __init__(self) -> None:
        self.requested, self.in_step = False, False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and not self.in_step:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Interrupt]:
        if (
            threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            yield self
            return
        signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Fused Adam (one kernel over all parameters) where this torch and device have it."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def train(
    process: Any,
    net: nn.Module,
    data: Any,
    config: TrainConfig | None = None,
    *,
    device: torch.device | str | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    latent: Any = None,
    **options: Any,
) -> TrainResult:
    """Train ``net`` on ``data`` with ``process.loss``; the options are a :class:`TrainConfig`
    (``config``, default ``TrainConfig()``) with ``options`` over it, as keywords of the same
    names (``train(p, net, data, steps=500, lr=1e-3)``); an unknown name is a ConfigError.

    ``data`` needs ``.x`` (``[n, *event_shape]``) and may have ``.labels`` (``[n]`` int),
    ``.name`` and ``.num_classes``; it is moved to ``device`` (default: the net's) once. Labels
    are passed as ``cond`` when the net has ``num_classes > 0``.

    ``checkpoint`` is written atomically every ``checkpoint_every`` steps, at the end and on
    Ctrl-C (then :class:`TrainingInterrupted` is raised); an existing file is refused unless
    ``resume`` (continue from it exactly; ``steps`` is the total, so it may be raised; the run
    must be the same run, see :func:`physgen.training.state.check_same_run`) or ``overwrite``.
    A non-finite loss raises :class:`~physgen.errors.TrainingError`. ``meta`` is stored in the
    checkpoint over :func:`physgen.training.describe`. ``latent`` (a
    :class:`physgen.training.latent.LatentCodec`, or a module with ``encode``/``decode``)
    trains ``net`` on the encoded data.
    """
    from physgen.core import validate as _v
    from physgen.core.process import Process

    _v.check_instance("process", process, Process, "a physgen Process (physgen.get_process)")
    _v.check_instance("net", net, nn.Module, "a torch.nn.Module (physgen.get_network)")
    if not callable(getattr(data, "open", None)):  # a streamed dataset is read per step
        if not isinstance(getattr(data, "x", None), torch.Tensor):
            _v.check_instance("data", data, (), "a physgen Dataset (physgen.load_dataset)")
        _v.check_tensor("data.x", data.x, min_ndim=2)
    # Options.
    cfg = config_from(TrainConfig, options, "train()", base=config)
    info = dist_info()
    cfg = config_from(TrainConfig, {"shards": cfg.shards or info.world_size}, "train()", cfg)
    shards, batch_size = int(cfg.shards or 1), cfg.batch_size
    if batch_size % shards or shards % info.world_size:
        raise ConfigError(
            f"batch_size {batch_size} must be a multiple of shards={shards}, and shards a "
            f"multiple of the {info.world_size} distributed ranks"
        )
    path = Path(checkpoint) if checkpoint is not None else None
    if resume and path is None:
        raise ConfigError("resume=True needs a checkpoint path")
    if path is not None and not resume and not overwrite and path.exists():
        raise ConfigError(f"{path} already exists (resume=True continues it, overwrite=True "
                          "replaces it)")  # fmt: skip
    cfg = _resolve_schedule(cfg)
    snapshots = _snapshot_folder(cfg, path, resume, overwrite)
    if cfg.tensorboard and info.is_main:
        check_tensorboard()  # asked for but not installed: one line, before any work
    start_time = time.perf_counter()

    # Setup: device, data, network, process.
    if device is None:
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
    device = torch.device(device)
    codec = None
    if latent is not None:
        from physgen.training.latent import as_codec, encode_dataset

        codec = as_codec(latent, data, device)
        data = encode_dataset(data, codec)
    # A streamed dataset (physgen.data.loader.Streamed) is asked for step k's batch instead.
    stream = data if callable(getattr(data, "open", None)) else None
    if stream is not None and latent is not None:
        raise ConfigError("latent mode needs the data in memory, not streamed")
    net.to(device).train()
    if callable(getattr(process, "setup", None)):
        process.setup(net)  # state that depends on the net (a target copy), before any load
    if isinstance(process, nn.Module):
        process.to(device)
    if stream is None:
        x, labels = data_tensors(data, device, net)
    else:  # shape-only stand-ins; the rows come from the source each step
        x = torch.empty(0, *stream.event_shape, device=device)
        use = stream.num_classes > 0 and getattr(net, "num_classes", 0) > 0
        labels = torch.empty(0, dtype=torch.long, device=device) if use else None
    if cfg.label_dropout > 0 and labels is None:
        raise ConfigError("label_dropout needs labelled data and a net with num_classes > 0")
    if cfg.channels_last:
        if x.ndim != 4:
            raise ConfigError(f"channels_last needs image data [n, C, H, W], got {list(x.shape)}")
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    run_meta = full_meta(meta, process, net, data)
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}  # JSON
    run_meta["train"] = {**plain, "device": str(device), "world_size": info.world_size}
    extra = {}
    if codec is not None:  # the net models latents: that is the shape to rebuild it with
        run_meta["dataset"]["event_shape"] = [int(d) for d in x.shape[1:]]
        run_meta["latent"] = codec.meta()
        extra = codec.tensors()

    # Training state: DDP and compile wrap what the loss calls; checkpoints hold `net`.
    ddp: Any = None
    fwd_net: Any = net
    if info.enabled:  # DDP broadcasts rank 0's weights, so the EMA copy comes after
        ids = [x.device.index] if x.device.type == "cuda" else None
        fwd_net = ddp = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    if cfg.compile:
        fwd_net = torch.compile(fwd_net)
    params = [p for p in net.parameters() if p.requires_grad]
    per_rank = shards // info.world_size
    shard_ids = list(range(info.rank * per_rank, (info.rank + 1) * per_rank))
    gammas = [sigma_rel_to_gamma(s) for s in cfg.ema_lengths]  # EDM2 Algorithm 2
    state = TrainState(
        net=net,
        ema=copy.deepcopy(net).float().eval().requires_grad_(False),
        process=process,
        optimizer=_adam(params, cfg.lr),
        data_gen=generator(data_seed(cfg.seed), x.device),
        shard_ids=shard_ids,
        loss_gens=[generator(noise_seed(cfg.seed, s), x.device) for s in shard_ids],
        profiles=[copy.deepcopy(net).float().eval().requires_grad_(False) for _ in gammas],
    )
    autocast: Any = (
        contextlib.nullcontext
        if cfg.precision == "fp32"
        else lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)
    )

    def no_sync(skip: bool) -> Any:
        return ddp.no_sync() if skip and ddp is not None else contextlib.nullcontext()

    # Resume.
    start, curves = 0, {name: [np.zeros(0, np.float32)] for name in CURVES}
    saved, saved_step = None, -1
    if resume and path is not None:
        start, history = restore_state(path, state, run_meta)
        curves = {name: [history[name]] for name in CURVES}
        saved, saved_step = path, start
    chunks = curves["losses"]
    pending: list[torch.Tensor] = []  # device losses not yet copied to the host
    pending_norms: list[torch.Tensor] = []  # and the gradient norms
    rates: list[tuple[int, float]] = []  # (step, steps/s) at each flush
    done, last_flush = start, (start, time.perf_counter())
    show = progress and info.is_main
    bar = tqdm(total=cfg.steps, initial=start, disable=not show, unit="step",
               dynamic_ncols=True, desc="train")  # fmt: skip

    def flush() -> None:
        """Copy the pending losses and gradient norms to the host (one sync), check them,
        and log them with the learning rates and the steps/s since the last flush."""
        nonlocal last_flush
        if not pending:
            return
        both = torch.stack([torch.stack(pending).float(), torch.stack(pending_norms).float()])
        chunk, norms = mean_over_ranks(both).cpu().numpy()
        pending.clear()
        pending_norms.clear()
        bad = ~np.isfinite(chunk)
        if bad.any():
            i = int(np.argmax(bad))
            raise TrainingError(f"non-finite loss {chunk[i]} at step {done - len(chunk) + i}")
        first = done - len(chunk)
        lrs = np.array([lr_at(k, cfg) for k in range(first, done)], np.float32)
        chunks.append(chunk)
        curves["grad_norm"].append(norms)
        curves["lr"].append(lrs)
        now = time.perf_counter()
        rates.append((done, (done - last_flush[0]) / max(now - last_flush[1], 1e-9)))
        last_flush = (done, now)
        if tensorboard is not None:
            tensorboard.add(first, chunk, norms, lrs, rates[-1][1])
        bar.set_postfix(loss=f"{chunk.mean():.4g}", refresh=False)
        bar.update(len(chunk))

    def save() -> None:
        nonlocal saved, saved_step
        if path is None or done == saved_step:
            return
        history = {name: np.concatenate(parts) for name, parts in curves.items()}
        saved = save_state(path, state, done, history, run_meta, extra, info.is_main)
        saved_step = done

    def snapshot() -> None:
        """The EMA profiles after ``done`` steps, for post-hoc EMA (rank 0 writes)."""
        if snapshots is not None and info.is_main:
            profiles = [p.state_dict() for p in state.profiles]
            save_snapshot(snapshots, done, profiles, cfg.ema_lengths)

    source = None
    if stream is not None:  # this rank's rows of every global batch, from (seed, step)
        where = dict(rank=info.rank, world_size=info.world_size, device=device)
        source = stream.open(batch_size, seed=cfg.seed, workers=cfg.workers, **where)
    first = shard_ids[0] * (batch_size // shards) if source is not None else 0
    tensorboard = TensorBoardLog(cfg.tensorboard) if cfg.tensorboard and info.is_main else None
    interrupt = _Interrupt()
    try:
        with interrupt.installed():
            for step in range(start, cfg.steps):
                interrupt.in_step = True
                # The step: the batch (with replacement) and its labels, from the data stream.
                if source is None:
                    idx = torch.randint(x.shape[0], (batch_size,), generator=state.data_gen,
                                        device=x.device)  # fmt: skip
                    y = x.index_select(0, idx)
                    cond = labels.index_select(0, idx) if labels is not None else None
                    if cond is not None and cfg.label_dropout > 0:
                        u = torch.rand(batch_size, generator=state.data_gen, device=x.device)
                else:  # this rank's rows only: they start at its first shard
                    batch = source.batch(step)
                    y, u = batch.x, batch.u
                    if cfg.channels_last:
                        y = y.contiguous(memory_format=torch.channels_last)
                    cond = batch.labels if labels is not None else None
                if cond is not None and cfg.label_dropout > 0:  # Ho & Salimans 2022, Alg. 1
                    cond = cond.masked_fill(u < cfg.label_dropout, -1)
                # Loss and gradient, shard by shard (each with its own noise and dropout
                # stream); DDP all-reduces with the backward of the last local shard.
                state.optimizer.zero_grad(set_to_none=True)
                per, count = batch_size // shards, len(shard_ids)
                total = torch.zeros((), device=x.device)
                for j, (shard, gen) in enumerate(zip(shard_ids, state.loss_gens, strict=True)):
                    rows = slice(shard * per - first, (shard + 1) * per - first)
                    c = cond[rows] if cond is not None else None
                    with seeded_global_rng(cfg.seed, shard, step, x.device):
                        # plugin code: an error names the plugin (physgen.registry.isolation)
                        with no_sync(j < count - 1), autocast(), plugin_call(process, "loss"):
                            loss = process.loss(fwd_net, y[rows], cond=c, step=step,
                                                generator=gen).float().mean()  # fmt: skip
                        with no_sync(j < count - 1):
                            (loss if count == 1 else loss / count).backward()
                    total = total + loss.detach()
                pending.append(total if count == 1 else total / count)
                # Clip (the norm before clipping is logged), Adam at this step's learning
                # rate, EMA (warm-up min(decay, (1 + k)/(10 + k)), as TensorFlow's
                # ExponentialMovingAverage with num_updates: the initial net fades out fast),
                # the power-function EMA profiles (EDM2 eq. 127: update k + 1 of each).
                if cfg.grad_clip > 0:
                    norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                else:
                    norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                pending_norms.append(norm.detach())
                for group in state.optimizer.param_groups:
                    group["lr"] = lr_at(step, cfg)
                state.optimizer.step()
                ema_update(state.ema, net, min(cfg.ema_decay, (1 + step) / (10 + step)))
                for gamma, profile in zip(gammas, state.profiles, strict=True):
                    ema_update(profile, net, power_beta(gamma, step + 1))
                process.after_step(net, step)
                done = step + 1
                interrupt.in_step = False
                # Log and checkpoint, at the clean boundary after the step.
                every = cfg.checkpoint_every
                due = path is not None and every is not None and done % every == 0
                if interrupt.requested or due or done % cfg.log_every == 0:
                    flush()
                if interrupt.requested:
                    raise KeyboardInterrupt
                snap_every = cfg.ema_snapshot_every
                if snap_every is not None and (done % snap_every == 0 or done == cfg.steps):
                    snapshot()
                if due:
                    save()
            flush()
            save()
    except KeyboardInterrupt:
        if not interrupt.in_step:  # a clean boundary: keep the work done so far
            flush()
            save()
        raise TrainingInterrupted(saved_step if path is not None else done, saved) from None
    finally:
        bar.close()
        if source is not None:
            source.close()
        if tensorboard is not None:
            tensorboard.close()
    barrier()  # rank 0's last checkpoint is on disk before any rank returns
    return TrainResult(
        net=net,
        ema=state.ema,
        losses=np.concatenate(chunks),
        steps=max(cfg.steps, start),
        wall_seconds=time.perf_counter() - start_time,
        checkpoint=saved,
        config=cfg,
        grad_norms=np.concatenate(curves["grad_norm"]),
        lrs=np.concatenate(curves["lr"]),
        steps_per_second=np.array(rates, np.float64).reshape(-1, 2),
        profiles=state.profiles,
    )


def _resolve_schedule(cfg: TrainConfig) -> TrainConfig:
    """``lr_tref`` defaults to the run's length (in ``lr_unit``), recorded so that a resumed
    run that raises ``steps`` cannot silently stretch a cosine decay."""
    if cfg.lr_schedule == "constant" or cfg.lr_tref is not None:
        return cfg
    scale = cfg.batch_size if cfg.lr_unit == "images" else 1
    return config_from(TrainConfig, {"lr_tref": cfg.steps * scale}, "train()", cfg)


def _snapshot_folder(
    cfg: TrainConfig, path: Path | None, resume: bool, overwrite: bool
) -> Path | None:
    """Where ``ema_snapshot_every`` writes (beside the checkpoint); a fresh run refuses an
    existing run's snapshots unless ``overwrite`` (then they are deleted first)."""
    if len(set(cfg.ema_lengths)) != len(cfg.ema_lengths):
        raise ConfigError(f"ema_lengths must be distinct, got {list(cfg.ema_lengths)}")
    if cfg.ema_snapshot_every is None:
        return None
    if not cfg.ema_lengths:
        raise ConfigError("ema_snapshot_every needs EMA profiles to snapshot: set ema_lengths")
    if path is None:
        raise ConfigError("ema_snapshot_every needs a checkpoint path (snapshots go beside it)")
    folder = snapshot_dir(path)
    if not resume and list_snapshots(folder):
        if not overwrite:
            raise ConfigError(f"{folder} holds EMA snapshots of an earlier run (resume=True "
                              "continues it, overwrite=True replaces it)")  # fmt: skip
        clear_snapshots(folder)
    return folder
