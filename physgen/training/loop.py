"""The process-agnostic training loop: Adam, EMA, gradient clipping, atomic checkpoints and
exact resume.

One step: draw ``batch_size`` indices with replacement from the data generator, ask the
process for the per-example loss (its own noise comes from a second generator), take the
mean, clip the gradient norm, step Adam, update the EMA, call ``process.after_step``.
Layers that can only draw from torch's global RNG (dropout) get it seeded from (seed, shard,
step) for the forward and backward of each shard, inside ``torch.random.fork_rng``, so the
caller's global RNG state is left unchanged. The two generator states, the weights, the EMA,
the optimizer and the process state are therefore the whole training state: a run
interrupted at step k and resumed from its checkpoint reproduces the uninterrupted loss curve
bitwise on the CPU, with dropout too. The state and its step live in
:mod:`physgen.training._trainer`, the step loop in :mod:`physgen.training._steps`; this
module checks the
options, writes and reads the checkpoints and drives both.

The loop never syncs with the device per step: losses stay on the device and are copied to
the host every ``log_every`` steps (and before every checkpoint), where they are checked for
non-finite values. Checkpoints are therefore only written from states whose losses were all
finite.

Adam is the fused implementation where torch has one for the device (CPU and CUDA since
torch 2.4). The EMA is ``ema ← ema + (1 − decay)(θ − ema)``, one ``torch._foreach_lerp_`` per
step. (``torch.optim.swa_utils.AveragedModel`` computes the same average, but its
``update_parameters`` reads its ``n_averaged`` buffer on the host twice per step, a device
sync each time on a GPU.)

Options beyond the loop: ``label_dropout`` replaces a label by −1 ("no label") with
probability p, drawn from the data generator, so one net learns the conditional and the
unconditional model for classifier-free guidance (Ho & Salimans 2022, Algorithm 1);
``precision="bf16"`` runs the loss under ``torch.autocast`` (weights, EMA and Adam state stay
float32); ``compile`` trains through ``torch.compile(net)`` while checkpoints hold the
original module's weights; ``channels_last`` for image data; ``shards`` and DDP
(:mod:`physgen.training.distributed`); ``latent`` trains in an autoencoder's latent space
(:mod:`physgen.training.latent`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from physgen.errors import CheckpointError, ConfigError, DataError
from physgen.io import (
    load_checkpoint_file,
    restore_module,
    restore_optimizer,
    save_checkpoint,
)
from physgen.training._steps import Loop
from physgen.training._trainer import Trainer, rng_key
from physgen.training.distributed import all_gather_objects, barrier, dist_info

__all__ = ["RESUME_KEYS", "TrainResult", "describe", "train"]

#: Training options that must match between a checkpoint and the run resuming it.
RESUME_KEYS = ("batch_size", "lr", "ema_decay", "grad_clip", "seed", "label_dropout", "shards")
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    #: the trained network (the object passed in, on the training device)
    net: nn.Module
    #: a copy of the network holding the EMA weights, float32, in eval mode
    ema: nn.Module
    #: float32 ``[steps]``: the mean loss of every step from step 0 (earlier runs included)
    losses: np.ndarray
    #: steps completed
    steps: int
    #: wall-clock seconds of this call
    wall_seconds: float
    #: the last checkpoint written, if any
    checkpoint: Path | None = None


def _module_device(net: nn.Module) -> torch.device:
    p = next(iter(net.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _options(process: Any) -> dict[str, Any]:
    options_dict = getattr(process, "options_dict", None)
    return options_dict() if callable(options_dict) else {}


class _Trainer(Trainer):
    """The training state with its checkpoint: :meth:`save` and :meth:`restore`."""

    def save(
        self, path: Path, step: int, losses: np.ndarray, meta: dict[str, Any],
        extra: dict[str, Tensor] | None = None,
    ) -> Path:  # fmt: skip
        """Write the checkpoint (rank 0; every rank must call this: it gathers the shards'
        generator states)."""
        rng = {"data": self.data_gen.get_state()}
        pairs = zip(self.shard_ids, self.loss_gens, strict=True)
        local = {rng_key(s): g.get_state() for s, g in pairs}
        for states in all_gather_objects(local):
            rng.update(states)
        if not self.info.is_main:
            return path
        process = self.process if isinstance(self.process, nn.Module) else None
        curve = torch.from_numpy(np.ascontiguousarray(losses, np.float32))
        return save_checkpoint(
            path,
            net=self.net,
            ema=self.ema,
            process=process,
            optimizer=self.optimizer,
            meta={**meta, "step": step},
            rng_state=rng,
            extra={**(extra or {}), "losses": curve},
        )

    def restore(self, path: Path, options: dict[str, Any]) -> tuple[int, np.ndarray]:
        """Load a checkpoint written by :meth:`save`; returns (step, losses so far)."""
        raw = load_checkpoint_file(path)
        saved = raw.meta.get("train", {})
        for key in RESUME_KEYS:
            if key in saved and saved[key] != options[key]:
                raise ConfigError(
                    f"{path} was trained with {key}={saved[key]!r}, not {options[key]!r}; "
                    "exact resume needs the same value"
                )
        restore_module(self.net, raw, "net")
        restore_module(self.ema, raw, "ema")
        if isinstance(self.process, nn.Module):
            restore_module(self.process, raw, "process")
        restore_optimizer(self.optimizer, raw)
        try:
            self.data_gen.set_state(raw.rng["data"])
            for shard, gen in zip(self.shard_ids, self.loss_gens, strict=True):
                gen.set_state(raw.rng[rng_key(shard)])
        except (KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path}: unusable generator state ({err})") from None
        losses = raw.extra.get("losses", torch.zeros(0)).numpy()
        if losses.shape != (raw.step,):
            raise CheckpointError(f"{path}: loss curve does not match step {raw.step}")
        return raw.step, losses


def _data_tensors(data: Any, device: torch.device, net: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The data (float, on ``device``) and the class labels when the net is conditional."""
    x = torch.as_tensor(data.x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"training data must be [n ≥ 1, *event_shape], got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    labels = getattr(data, "labels", None)
    if labels is None or getattr(net, "num_classes", 0) <= 0:
        return x.to(device), None
    labels = torch.as_tensor(labels).to(device=device, dtype=torch.long)
    if labels.shape != (x.shape[0],):
        raise DataError(f"{x.shape[0]} examples but labels of shape {tuple(labels.shape)}")
    return x.to(device), labels


def describe(process: Any, net: nn.Module, data: Any) -> dict[str, Any]:
    """Checkpoint metadata naming what was trained: ``{"process": {name, options}, "network":
    {name, config}, "dataset": {name, event_shape, num_classes, info}}``.

    Names come from the ``registry_name`` attribute that :func:`physgen.api.get_process` sets
    (and ``registry_name``/``registry_config`` on a network, where its factory sets them),
    else from the class name; the network config is then empty.
    """
    x = data.x
    return {
        "process": {
            "name": getattr(process, "registry_name", None) or type(process).__name__,
            "options": _options(process),
        },
        "network": {
            "name": getattr(net, "registry_name", None) or type(net).__name__,
            "config": dict(getattr(net, "registry_config", None) or {}),
            "num_classes": int(getattr(net, "num_classes", 0) or 0),
        },
        "dataset": {
            "name": getattr(data, "name", None),
            "event_shape": [int(d) for d in x.shape[1:]],
            "num_classes": int(getattr(data, "num_classes", 0) or 0),
            "info": dict(getattr(data, "info", None) or {}),
        },
    }


def _meta(meta: dict[str, Any] | None, process: Any, net: nn.Module, data: Any) -> dict[str, Any]:
    """The caller's ``meta`` over :func:`describe` (merged one level deep)."""
    out: dict[str, Any] = describe(process, net, data)
    for key, value in (meta or {}).items():
        base = out.get(key)
        out[key] = (
            {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
        )
    return out


def _validate(
    steps: int, batch_size: int, lr: float, ema_decay: float, grad_clip: float | None,
    log_every: int, checkpoint_every: int | None, resume: bool, checkpoint: Any,
) -> None:  # fmt: skip
    checks = [
        (steps >= 1, f"steps must be ≥ 1, got {steps}"),
        (batch_size >= 1, f"batch_size must be ≥ 1, got {batch_size}"),
        (0 < lr < float("inf"), f"lr must be finite and > 0, got {lr}"),
        (0 <= ema_decay <= 1, f"ema_decay must be in [0, 1], got {ema_decay}"),
        (grad_clip is None or grad_clip > 0, f"grad_clip must be > 0 or None, got {grad_clip}"),
        (log_every >= 1, f"log_every must be ≥ 1, got {log_every}"),
        (
            checkpoint_every is None or checkpoint_every >= 1,
            f"checkpoint_every must be ≥ 1 or None, got {checkpoint_every}",
        ),
        (not resume or checkpoint is not None, "resume=True needs a checkpoint path"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _validate_extras(
    label_dropout: float, shards: int, batch_size: int, world_size: int, precision: str
) -> None:
    checks = [
        (0 <= label_dropout < 1, f"label_dropout must be in [0, 1), got {label_dropout}"),
        (precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {precision!r}"),
        (shards >= 1 and batch_size % shards == 0,
         f"batch_size {batch_size} must be a multiple of shards={shards}"),
        (shards % world_size == 0,
         f"shards={shards} must be a multiple of the {world_size} distributed ranks"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def train(
    process: Any,
    net: nn.Module,
    data: Any,
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    ema_decay: float = 0.999,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = 500,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    log_every: int = 50,
    label_dropout: float = 0.0,
    shards: int | None = None,
    precision: str = "fp32",
    compile: bool = False,
    channels_last: bool = False,
    latent: Any = None,
) -> TrainResult:
    """Train ``net`` on ``data`` with ``process.loss`` for ``steps`` steps in total.

    ``data`` needs ``.x`` (``[n, *event_shape]``) and may have ``.labels`` (``[n]`` int),
    ``.name`` and ``.num_classes``; it is moved to ``device`` (default: the net's) once.
    Labels are passed as ``cond`` when ``data.labels`` is not None and the net has an
    attribute ``num_classes > 0``. ``grad_clip=None`` disables clipping.

    ``checkpoint`` is written atomically every ``checkpoint_every`` steps (None: only at the
    end), at the end, and on KeyboardInterrupt. ``resume=True`` continues from it exactly
    (same ``RESUME_KEYS`` options required); ``steps`` is the total, so it may be raised.
    Losses are copied to the host every ``log_every`` steps (no per-step sync); a non-finite
    loss raises :class:`TrainingError` at the next copy, and the last checkpoint on disk is the
    last finite state. ``meta`` (``process``/``network``/``dataset`` names and configs) is stored
    in the checkpoint; missing entries are filled from the objects.

    ``label_dropout`` (p ∈ [0, 1)) trains a conditional net for classifier-free guidance.
    ``shards`` (default: the DDP world size, 1 without DDP) splits each batch into that many
    equal shards with their own noise generators (gradient accumulation); under ``torchrun``
    each rank trains its share of the shards (:mod:`physgen.training.distributed`), and rank 0
    writes the
    checkpoint. ``precision`` is ``"fp32"`` or ``"bf16"`` (autocast on the data's device).
    ``compile`` uses ``torch.compile(net)`` for the loss. ``channels_last`` needs image data
    ``[n, C, H, W]``. ``latent`` (a :class:`physgen.training.latent.LatentCodec`, or any module with
    ``encode``/``decode``, scaled here to unit-std latents) trains ``net`` on the encoded data;
    the checkpoint records the autoencoder so sampling can decode.
    """
    from physgen.core import validate as _v
    from physgen.core.process import Process

    _v.check_instance("process", process, Process, "a physgen Process (physgen.get_process)")
    _v.check_instance("net", net, nn.Module, "a torch.nn.Module (physgen.get_network)")
    if not isinstance(getattr(data, "x", None), torch.Tensor):
        _v.check_instance("data", data, (), "a physgen Dataset (physgen.load_dataset)")
    _v.check_tensor("data.x", data.x, min_ndim=2)
    info = dist_info()
    shards = info.world_size if shards is None else shards
    _validate(
        steps, batch_size, lr, ema_decay, grad_clip, log_every, checkpoint_every, resume,
        checkpoint,
    )  # fmt: skip
    _validate_extras(label_dropout, shards, batch_size, info.world_size, precision)
    start_time = time.perf_counter()
    device = torch.device(device) if device is not None else _module_device(net)
    codec = None
    if latent is not None:
        from physgen.training.latent import as_codec, encode_dataset

        codec = as_codec(latent, data, device)
        data = encode_dataset(data, codec)
    net.to(device).train()
    setup = getattr(process, "setup", None)
    if callable(setup):
        setup(net)  # state that depends on the net (a target copy), before any load
    if isinstance(process, nn.Module):
        process.to(device)
    x, labels = _data_tensors(data, device, net)
    if label_dropout > 0 and labels is None:
        raise ConfigError("label_dropout needs labelled data and a net with num_classes > 0")
    if channels_last:
        if x.ndim != 4:
            raise ConfigError(f"channels_last needs image data [n, C, H, W], got {list(x.shape)}")
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    options = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
        "grad_clip": grad_clip, "seed": seed, "device": str(device),
        "label_dropout": label_dropout, "shards": shards, "precision": precision,
        "compile": compile, "channels_last": channels_last, "world_size": info.world_size,
    }  # fmt: skip
    full_meta = {**_meta(meta, process, net, data), "train": options}
    extra = {}
    if codec is not None:  # the net models latents: that is the shape to rebuild it with
        full_meta["dataset"]["event_shape"] = [int(d) for d in x.shape[1:]]
        full_meta["latent"] = codec.meta()
        extra = codec.tensors()
    trainer = _Trainer(
        process, net, x, labels, batch_size=batch_size, lr=lr, ema_decay=ema_decay,
        grad_clip=grad_clip, seed=seed, label_dropout=label_dropout, shards=shards,
        precision=precision, compile=compile,
    )  # fmt: skip
    path = Path(checkpoint) if checkpoint is not None else None
    start, history = 0, np.zeros(0, np.float32)
    if resume and path is not None:
        start, history = trainer.restore(path, options)
    show = progress and info.is_main
    loop = Loop(trainer, path, full_meta, steps, log_every, checkpoint_every, show, extra)
    if resume:
        loop.saved, loop.saved_step = path, start
    losses = loop.run(start, history)
    barrier()  # rank 0's last checkpoint is on disk before any rank returns
    return TrainResult(
        net=net,
        ema=trainer.ema,
        losses=losses,
        steps=max(steps, start),
        wall_seconds=time.perf_counter() - start_time,
        checkpoint=loop.saved,
    )
