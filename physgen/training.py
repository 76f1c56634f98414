"""The process-agnostic training loop: Adam, EMA, gradient clipping, atomic checkpoints and
exact resume.

One step: draw ``batch_size`` indices with replacement from the data generator, ask the
process for the per-example loss (its own noise comes from a second generator), take the
mean, clip the gradient norm, step Adam, update the EMA, call ``process.after_step``.
Nothing touches the global RNG, so the two generator states, the weights, the EMA, the
optimizer and the process state are the whole training state: a run interrupted at step k
and resumed from its checkpoint reproduces the uninterrupted loss curve bitwise on the CPU.

The loop never syncs with the device per step: losses stay on the device and are copied to
the host every ``log_every`` steps (and before every checkpoint), where they are checked for
non-finite values. Checkpoints are therefore only written from states whose losses were all
finite.

Adam is the fused implementation where torch has one for the device (CPU and CUDA since
torch 2.4). The EMA is ``ema ← ema + (1 − decay)(θ − ema)``, one ``torch._foreach_lerp_`` per
step. (``torch.optim.swa_utils.AveragedModel`` computes the same average, but its
``update_parameters`` reads its ``n_averaged`` buffer on the host twice per step, a device
sync each time on a GPU.)
"""

from __future__ import annotations

import contextlib
import copy
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from physgen.errors import CheckpointError, ConfigError, DataError, TrainingError
from physgen.io import (
    load_checkpoint_file,
    restore_module,
    restore_optimizer,
    save_checkpoint,
)

__all__ = ["RESUME_KEYS", "TrainResult", "describe", "train"]

#: Training options that must match between a checkpoint and the run resuming it.
RESUME_KEYS = ("batch_size", "lr", "ema_decay", "grad_clip", "seed")


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


@dataclass
class _Interrupt:
    requested: bool = False


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[_Interrupt]:
    """Turn Ctrl-C into a flag the loop checks between steps, so the checkpoint it writes is
    a clean step boundary. A second Ctrl-C raises at once. Only in the main thread, and only
    when nobody else has installed a SIGINT handler."""
    state = _Interrupt()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield state
        return

    def handler(signum: int, frame: Any) -> None:
        if state.requested:
            raise KeyboardInterrupt
        state.requested = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _seeds(seed: int) -> tuple[int, int]:
    """Two independent 63-bit seeds (data order, process noise) from one user seed."""
    a, b = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return int(a) >> 1, int(b) >> 1


def _generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Fused Adam (one kernel over all parameters) where this torch and device have it, which
    pays for the clipping and EMA that a bare loop skips; the plain Adam otherwise."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def _module_device(net: nn.Module) -> torch.device:
    p = next(iter(net.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _options(process: Any) -> dict[str, Any]:
    options_dict = getattr(process, "options_dict", None)
    return options_dict() if callable(options_dict) else {}


class _Trainer:
    """The training state and one step of it; :func:`train` drives the loop."""

    def __init__(
        self, process: Any, net: nn.Module, x: Tensor, labels: Tensor | None, *,
        batch_size: int, lr: float, ema_decay: float, grad_clip: float | None, seed: int,
    ):  # fmt: skip
        self.process, self.net, self.x, self.labels = process, net, x, labels
        self.batch_size, self.ema_decay, self.grad_clip = batch_size, ema_decay, grad_clip
        self.ema = copy.deepcopy(net).float().eval().requires_grad_(False)
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.optimizer = _adam(self.params, lr)
        self._ema_pairs = self._pairs(self.ema.parameters(), net.parameters())
        self._buffer_pairs = self._pairs(self.ema.buffers(), net.buffers())
        data_seed, loss_seed = _seeds(seed)
        self.data_gen = _generator(data_seed, x.device)
        self.loss_gen = _generator(loss_seed, x.device)

    @staticmethod
    def _pairs(dst: Iterator[Tensor], src: Iterator[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return [t.detach() for t in dst], [t.detach() for t in src]

    def step(self, step: int) -> Tensor:
        """One optimisation step; returns the (device) mean loss, detached."""
        idx = torch.randint(
            self.x.shape[0], (self.batch_size,), generator=self.data_gen, device=self.x.device
        )
        y = self.x.index_select(0, idx)
        cond = self.labels.index_select(0, idx) if self.labels is not None else None
        loss = self.process.loss(self.net, y, cond=cond, step=step, generator=self.loss_gen)
        loss = loss.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self._update_ema(step)
        self.process.after_step(self.net, step)
        return loss.detach()

    def _update_ema(self, step: int) -> None:
        ema, net = self._ema_pairs
        if ema and ema[0].dtype != net[0].dtype:
            net = [t.float() for t in net]
        # Warm-up min(decay, (1 + k)/(10 + k)) (as TensorFlow's ExponentialMovingAverage with
        # num_updates): early weights, starting from a zero-output network, fade out quickly
        # instead of lingering (0.999 over 2000 steps would keep 13.5% of the initial net).
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema, net, 1.0 - decay)
        if self._buffer_pairs[0]:
            torch._foreach_copy_(*self._buffer_pairs)

    def save(self, path: Path, step: int, losses: np.ndarray, meta: dict[str, Any]) -> Path:
        rng = {"data": self.data_gen.get_state(), "loss": self.loss_gen.get_state()}
        process = self.process if isinstance(self.process, nn.Module) else None
        return save_checkpoint(
            path,
            net=self.net,
            ema=self.ema,
            process=process,
            optimizer=self.optimizer,
            meta={**meta, "step": step},
            rng_state=rng,
            extra={"losses": torch.from_numpy(np.ascontiguousarray(losses, np.float32))},
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
            self.loss_gen.set_state(raw.rng["loss"])
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
        (lr > 0, f"lr must be > 0, got {lr}"),
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


def _check_finite(chunk: np.ndarray, first_step: int) -> None:
    bad = ~np.isfinite(chunk)
    if bad.any():
        i = int(np.argmax(bad))
        raise TrainingError(f"non-finite loss {chunk[i]} at step {first_step + i}")


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
    """
    _validate(
        steps, batch_size, lr, ema_decay, grad_clip, log_every, checkpoint_every, resume,
        checkpoint,
    )  # fmt: skip
    start_time = time.perf_counter()
    device = torch.device(device) if device is not None else _module_device(net)
    net.to(device).train()
    setup = getattr(process, "setup", None)
    if callable(setup):
        setup(net)  # state that depends on the net (a target copy), before any load
    if isinstance(process, nn.Module):
        process.to(device)
    x, labels = _data_tensors(data, device, net)
    options = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
        "grad_clip": grad_clip, "seed": seed, "device": str(device),
    }  # fmt: skip
    full_meta = {**_meta(meta, process, net, data), "train": options}
    trainer = _Trainer(
        process, net, x, labels, batch_size=batch_size, lr=lr, ema_decay=ema_decay,
        grad_clip=grad_clip, seed=seed,
    )  # fmt: skip
    path = Path(checkpoint) if checkpoint is not None else None
    start, history = 0, np.zeros(0, np.float32)
    if resume and path is not None:
        start, history = trainer.restore(path, options)
    loop = _Loop(trainer, path, full_meta, steps, log_every, checkpoint_every, progress)
    if resume:
        loop.saved, loop.saved_step = path, start
    losses = loop.run(start, history)
    return TrainResult(
        net=net,
        ema=trainer.ema,
        losses=losses,
        steps=max(steps, start),
        wall_seconds=time.perf_counter() - start_time,
        checkpoint=loop.saved,
    )


@dataclass
class _Loop:
    """Runs steps, syncs losses every ``log_every`` steps, checkpoints, handles Ctrl-C."""

    trainer: _Trainer
    path: Path | None
    meta: dict[str, Any]
    steps: int
    log_every: int
    checkpoint_every: int | None
    progress: bool
    saved: Path | None = None
    saved_step: int = -1

    def run(self, start: int, history: np.ndarray) -> np.ndarray:
        chunks, pending = [history], []
        done = start
        bar = tqdm(
            total=self.steps, initial=start, disable=not self.progress, unit="step",
            dynamic_ncols=True, desc="train",
        )  # fmt: skip
        try:
            with _deferred_sigint() as interrupt:
                for step in range(start, self.steps):
                    pending.append(self.trainer.step(step))
                    done = step + 1
                    if interrupt.requested or self._sync_due(done):
                        self._flush(pending, done, chunks, bar)
                        if interrupt.requested:
                            raise KeyboardInterrupt
                        if self._checkpoint_due(done):
                            self._save(done, chunks)
                self._flush(pending, done, chunks, bar)
                self._save(done, chunks)
        except KeyboardInterrupt:
            self._flush(pending, done, chunks, bar)
            self._save(done, chunks)
            raise
        finally:
            bar.close()
        return np.concatenate(chunks)

    def _sync_due(self, done: int) -> bool:
        return done % self.log_every == 0 or done == self.steps or self._checkpoint_due(done)

    def _checkpoint_due(self, done: int) -> bool:
        every = self.checkpoint_every
        return self.path is not None and every is not None and done % every == 0

    def _flush(self, pending: list[Tensor], done: int, chunks: list[np.ndarray], bar: Any) -> None:
        """Copy the pending losses to the host (one sync) and check them."""
        if not pending:
            return
        chunk = torch.stack(pending).float().cpu().numpy()
        pending.clear()
        _check_finite(chunk, done - len(chunk))
        chunks.append(chunk)
        bar.set_postfix(loss=f"{chunk.mean():.4g}", refresh=False)
        bar.update(len(chunk))

    def _save(self, done: int, chunks: list[np.ndarray]) -> None:
        if self.path is None or done == self.saved_step:
            return
        losses = np.concatenate(chunks)
        self.saved = self.trainer.save(self.path, done, losses, self.meta)
        self.saved_step = done
