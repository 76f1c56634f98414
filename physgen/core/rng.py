"""Explicit randomness. Library code never touches the global RNG.

:class:`StackedGenerator` gives every sample its own ``torch.Generator`` (as NVlabs/edm's
``StackedRandomGenerator``), so a sample depends on its seed and index only, never on the
batch size it was drawn in. Samplers draw noise through :func:`randn_like`, which accepts
either kind of generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["Generator", "StackedGenerator", "derive_seed", "randn", "randn_like"]


class StackedGenerator:
    """One ``torch.Generator`` per sample; ``randn`` stacks their draws along dim 0."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(int(s))
            self.generators.append(g)

    @classmethod
    def for_samples(
        cls, seed: int, start: int, count: int, device: torch.device | str = "cpu"
    ) -> StackedGenerator:
        """Generators for samples ``start .. start+count−1`` of the run seeded by ``seed``.

        Each sample's seed is hashed from ``(seed, i)`` by NumPy's ``SeedSequence`` into 32
        bits: torch's CPU generator keeps only the low 32 bits of a seed, so arithmetic such
        as ``(seed << 32) + i`` would give every run seed the same noise.
        """
        return cls([_sample_seed(seed, i) for i in range(start, start + count)], device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], *, dtype: torch.dtype = torch.float32) -> Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"batch of {shape[0]} but {len(self.generators)} generators")
        return torch.stack(
            [
                torch.randn(tuple(shape[1:]), generator=g, device=self.device, dtype=dtype)
                for g in self.generators
            ]
        )


def derive_seed(seed: int, *key: int | str) -> int:
    """The 63-bit seed of the stream named ``key`` in the run seeded by ``seed``: the one
    derivation physgen uses for every stream a run needs besides its own (reference data,
    reflow pairs, pilot draws, ...), instead of ad-hoc offsets such as ``seed + 1``.

    NumPy's ``SeedSequence(seed, spawn_key=key)`` hashes the pair, so streams with different
    keys are independent and a stream does not shift when another one is added. String keys
    are hashed by their UTF-8 bytes (stable across processes, unlike ``hash``).
    """
    spawn = tuple(
        int.from_bytes(k.encode(), "little") if isinstance(k, str) else int(k) for k in key
    )
    state = np.random.SeedSequence(int(seed), spawn_key=spawn).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def _sample_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


#: what samplers and priors accept: one ``torch.Generator`` or one per sample
Generator = torch.Generator | StackedGenerator


def randn(
    shape: Sequence[int],
    *,
    generator: Generator | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of ``shape`` from ``generator`` (plain or stacked)."""
    if isinstance(generator, StackedGenerator):
        return generator.randn(shape, dtype=dtype).to(device or generator.device)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def randn_like(x: Tensor, generator: Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, on its device and in its dtype."""
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
