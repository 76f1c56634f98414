"""The step loop of :func:`physgen.training.train`: loss syncs every ``log_every`` steps,
checkpoints, Ctrl-C turned into a checkpoint at a clean step boundary, and the per-step
seeding of torch's global generator for layers that cannot take a generator (dropout).

SplitMix64: Steele, Lea, Flood. Fast Splittable Pseudorandom Number Generators. OOPSLA 2014.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from physgen.errors import TrainingError
from physgen.training.distributed import mean_over_ranks

__all__ = ["Loop", "global_rng_base", "seeded_global_rng"]

_MASK64 = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_GLOBAL_RNG_KEY = 0x676C6F62  # "glob": keeps these streams apart from the data/noise seeds


def global_rng_base(seed: int, shard: int) -> int:
    """The 64-bit base of shard ``shard``'s per-step global-RNG seeds."""
    key = (_GLOBAL_RNG_KEY, shard)
    return int(np.random.SeedSequence(seed, spawn_key=key).generate_state(1, np.uint64)[0])


def _step_seed(base: int, step: int) -> int:
    """Element ``step`` of the SplitMix64 stream from ``base`` (Steele et al. 2014, Fig. 1:
    state += γ, then the mix13 finaliser), 63 bits. A function of (base, step) alone, so a
    resumed run needs no extra state and no device sync to find it."""
    z = (base + (step + 1) * _GOLDEN_GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


@contextlib.contextmanager
def seeded_global_rng(base: int, step: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global generators (CPU and ``device``'s) seeded from
    (``base``, ``step``), and restore their previous states afterwards.

    Dropout (``torch.nn.functional.dropout``) draws from the global generator and takes no
    other; seeding it per step makes a step's masks a function of the run's seed and the step,
    so resume is exact, and the caller's global RNG is left as it was.
    """
    if device.type == "meta":
        yield
        return
    seed = _step_seed(base, step)
    accelerator = device.type != "cpu"
    devices = [device] if accelerator else []
    with torch.random.fork_rng(devices, device_type=device.type if accelerator else None):
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: every device, slow
        if accelerator:  # the manual_seed of cuda/xpu/mps seeds the current device
            module: Any = torch.get_device_module(device.type)
            select: Any = getattr(module, "device", None)
            pinned = device.index is not None and select is not None
            with select(device) if pinned else contextlib.nullcontext():
                module.manual_seed(seed)
        yield


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


def _check_finite(chunk: np.ndarray, first_step: int) -> None:
    bad = ~np.isfinite(chunk)
    if bad.any():
        i = int(np.argmax(bad))
        raise TrainingError(f"non-finite loss {chunk[i]} at step {first_step + i}")


@dataclass
class Loop:
    """Runs steps, syncs losses every ``log_every`` steps, checkpoints, handles Ctrl-C."""

    trainer: Any  # physgen.training._Trainer
    path: Path | None
    meta: dict[str, Any]
    steps: int
    log_every: int
    checkpoint_every: int | None
    progress: bool
    extra: dict[str, Tensor]
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
        chunk = mean_over_ranks(torch.stack(pending).float()).cpu().numpy()
        pending.clear()
        _check_finite(chunk, done - len(chunk))
        chunks.append(chunk)
        bar.set_postfix(loss=f"{chunk.mean():.4g}", refresh=False)
        bar.update(len(chunk))

    def _save(self, done: int, chunks: list[np.ndarray]) -> None:
        if self.path is None or done == self.saved_step:
            return
        losses = np.concatenate(chunks)
        self.saved = self.trainer.save(self.path, done, losses, self.meta, self.extra)
        self.saved_step = done
