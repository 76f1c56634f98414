"""Where every random draw of a training run comes from, as a function of its seed.

One derivation, :func:`physgen.core.rng.derive_seed` (NumPy's ``SeedSequence(seed,
spawn_key=key)``, 63 bits):

* data order and label dropout: ``derive_seed(seed)``, a ``torch.Generator`` on the data's
  device;
* the process's noise of shard ``s`` (its own generator, so the noise of an example does not
  depend on how the batch is split): ``derive_seed(seed, s)`` for ``s ≥ 1``; shard 0 keeps the
  second word of ``SeedSequence(seed)`` (what one-process runs have always used, so their
  results stay bitwise the same);
* torch's global generator, which dropout draws from and which takes no other:
  ``derive_seed(seed, "dropout", s, step)`` for the forward and backward of shard ``s`` at
  ``step``, inside ``torch.random.fork_rng`` so the caller's global state is left as it was.

Every stream is a function of (seed, shard, step) alone, so a resumed run needs no extra state
to find it, and never a device sync.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from physgen.core.rng import derive_seed

__all__ = ["data_seed", "generator", "noise_seed", "rng_key", "seeded_global_rng"]


def data_seed(seed: int) -> int:
    """The seed of the data-order (and label-dropout) generator."""
    return derive_seed(seed)


def noise_seed(seed: int, shard: int) -> int:
    """The seed of shard ``shard``'s noise generator."""
    if shard == 0:
        return int(np.random.SeedSequence(seed).generate_state(2, np.uint64)[1]) >> 1
    return derive_seed(seed, shard)


def rng_key(shard: int) -> str:
    """The checkpoint's name of shard ``shard``'s noise generator state."""
    return "loss" if shard == 0 else f"loss{shard}"


def generator(seed: int, device: torch.device) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@contextlib.contextmanager
def seeded_global_rng(seed: int, shard: int, step: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global generators (CPU and ``device``'s) seeded from
    (``seed``, ``shard``, ``step``), and restore their previous states afterwards."""
    if device.type == "meta":
        yield
        return
    value = derive_seed(seed, "dropout", shard, step)
    accelerator = device.type != "cpu"
    devices = [device] if accelerator else []
    with torch.random.fork_rng(devices, device_type=device.type if accelerator else None):
        torch.default_generator.manual_seed(value)  # not torch.manual_seed: every device, slow
        if accelerator:  # the manual_seed of cuda/xpu/mps seeds the current device
            module: Any = torch.get_device_module(device.type)
            select: Any = getattr(module, "device", None)
            pinned = device.index is not None and select is not None
            with select(device) if pinned else contextlib.nullcontext():
                module.manual_seed(value)
        yield
