"""The training state of :func:`physgen.training.train` and one step of it: the data and
noise generators (one noise generator per shard, seeded from the run's seed), fused Adam,
gradient clipping, the EMA update, shards and DDP. :mod:`physgen.training` writes and reads
its checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from physgen.registry import plugin_call
from physgen.training._steps import global_rng_base, seeded_global_rng
from physgen.training.distributed import dist_info

__all__ = ["Trainer", "rng_key"]


def _seeds(seed: int) -> tuple[int, int]:
    """Two independent 63-bit seeds (data order, process noise) from one user seed."""
    a, b = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return int(a) >> 1, int(b) >> 1


def _shard_seed(seed: int, shard: int) -> int:
    """The noise seed of shard ``shard``; shard 0 keeps the one-process seed."""
    if shard == 0:
        return _seeds(seed)[1]
    state = np.random.SeedSequence(seed, spawn_key=(shard,)).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def rng_key(shard: int) -> str:
    """The checkpoint's name of shard ``shard``'s noise generator state."""
    return "loss" if shard == 0 else f"loss{shard}"


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


class Trainer:
    """The training state and one step of it; :func:`physgen.training.train` drives the loop
    and checkpoints it."""

    def __init__(
        self, process: Any, net: nn.Module, x: Tensor, labels: Tensor | None, *,
        batch_size: int, lr: float, ema_decay: float, grad_clip: float | None, seed: int,
        label_dropout: float = 0.0, shards: int = 1, precision: str = "fp32",
        compile: bool = False,
    ):  # fmt: skip
        self.process, self.net, self.x, self.labels = process, net, x, labels
        self.batch_size, self.ema_decay, self.grad_clip = batch_size, ema_decay, grad_clip
        self.label_dropout, self.shards, self.precision = label_dropout, shards, precision
        self.info = dist_info()
        self.ddp: nn.Module | None = None
        self.fwd_net: Any = net  # what the loss calls; self.net is what checkpoints hold
        if self.info.enabled:  # DDP broadcasts rank 0's weights, so the EMA copy comes after
            ids = [x.device.index] if x.device.type == "cuda" else None
            self.fwd_net = self.ddp = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if compile:
            self.fwd_net = torch.compile(self.fwd_net)
        self.ema = copy.deepcopy(net).float().eval().requires_grad_(False)
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.optimizer = _adam(self.params, lr)
        self._ema_pairs = self._pairs(self.ema.parameters(), net.parameters())
        self._buffer_pairs = self._pairs(self.ema.buffers(), net.buffers())
        self.data_gen = _generator(_seeds(seed)[0], x.device)
        per_rank = shards // self.info.world_size
        self.shard_ids = list(range(self.info.rank * per_rank, (self.info.rank + 1) * per_rank))
        self.loss_gens = [_generator(_shard_seed(seed, s), x.device) for s in self.shard_ids]
        self.rng_bases = [global_rng_base(seed, s) for s in self.shard_ids]  # dropout

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
        if cond is not None and self.label_dropout > 0:  # p_uncond, Ho & Salimans 2022 Alg. 1
            u = torch.rand(self.batch_size, generator=self.data_gen, device=self.x.device)
            cond = cond.masked_fill(u < self.label_dropout, -1)
        self.optimizer.zero_grad(set_to_none=True)
        per, count = self.batch_size // self.shards, len(self.shard_ids)
        total = torch.zeros((), device=self.x.device)
        shards = zip(self.shard_ids, self.loss_gens, self.rng_bases, strict=True)
        for j, (shard, gen, base) in enumerate(shards):
            rows = slice(shard * per, (shard + 1) * per)
            c = cond[rows] if cond is not None else None
            last = j == count - 1  # DDP all-reduces with the last local shard's backward
            with seeded_global_rng(base, step, self.x.device):
                with self._no_sync(not last), self._autocast(), plugin_call(self.process, "loss"):
                    loss = self.process.loss(
                        self.fwd_net, y[rows], cond=c, step=step, generator=gen
                    )
                    loss = loss.float().mean()
                with self._no_sync(not last):
                    (loss if count == 1 else loss / count).backward()
            total = total + loss.detach()
        loss = total if count == 1 else total / count
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self._update_ema(step)
        self.process.after_step(self.net, step)
        return loss

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.x.device.type, dtype=torch.bfloat16)

    def _no_sync(self, skip: bool) -> contextlib.AbstractContextManager[Any]:
        if skip and self.ddp is not None:
            return self.ddp.no_sync()  # type: ignore[operator]
        return contextlib.nullcontext()

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
