"""The deterministic index stream: what step ``k`` reads is a function of ``(seed, k)`` alone.

Every random draw the data layer makes for step ``k`` — the batch's row indices (uniform, with
replacement, as the in-memory trainer draws them), the horizontal flips, the crop offsets and
the label-dropout uniforms — comes from generators seeded by
:func:`physgen.core.rng.derive_seed` ``(seed, kind, k)``. Consequences:

- **Exact resume with no state.** A run resumed at step ``k`` recomputes step ``k``'s draws;
  nothing about the data needs to be in the checkpoint.
- **Disjoint shards.** The draws are made for the *global* batch of ``B`` rows; rank ``r`` of
  ``W`` reads rows ``r·B/W … (r+1)·B/W − 1`` of it (the rows the trainer's shards
  ``r·S/W …`` cover), so the ranks together read exactly the one-process batch.
- **Independent of the DataLoader.** All draws are made in the main process; workers only
  read rows, so the batch of step ``k`` does not depend on ``--workers``.
- **Kinds are independent.** Each kind has its own derived seed, so switching flips on does
  not move the row indices.

Augmentation (:func:`augment`) is applied to the batch after it reaches the device, on the
source dtype: a flip or a crop only moves pixels, so doing it before or after the map to
``[-1, 1]`` gives the same numbers. Random horizontal flips with p = ½ are EDM's ``--xflip``
(Karras et al. 2022, App. F.2), drawn per step instead of doubling the dataset.

:class:`ToyStream` draws fresh samples of a built-in generator every step (torchcfm's 2-D
recipes, Tong et al. 2024, draw a new batch each step rather than resampling a fixed pool), and
:class:`PairStream` a (source, target) pair of them for flow matching between two
distributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from physgen.core.rng import derive_seed
from physgen.errors import ConfigError

__all__ = ["Batch", "BatchSource", "IndexStream", "PairStream", "StepDraws", "ToyStream",
           "augment", "rank_rows"]  # fmt: skip


@dataclass(frozen=True)
class StepDraws:
    """The draws of one step for the global batch of ``B`` rows (all on the CPU)."""

    #: ``[B]`` int64 row indices, uniform with replacement
    index: Tensor
    #: ``[B]`` uniforms in ``[0, 1)`` for label dropout (Ho & Salimans 2022, Algorithm 1)
    u: Tensor
    #: ``[B]`` bool: mirror this row (``None`` without flips)
    flip: Tensor | None = None
    #: ``[B, 2]`` int64 top-left corner of the crop (``None`` without crops)
    crop: Tensor | None = None

    def rows(self, part: slice) -> StepDraws:
        """The draws of rows ``part`` of the batch."""
        return StepDraws(
            self.index[part], self.u[part],
            None if self.flip is None else self.flip[part],
            None if self.crop is None else self.crop[part],
        )  # fmt: skip


@dataclass(frozen=True)
class Batch:
    """One step's rows for this rank, on the training device, in the model's range."""

    #: ``[b, *event_shape]`` float32
    x: Tensor
    #: ``[b]`` int64 class labels, or ``None``
    labels: Tensor | None = None
    #: ``[b]`` label-dropout uniforms (same device)
    u: Tensor | None = None
    #: ``[b, *event_shape]`` source draws of a :class:`PairStream`, else ``None``
    x0: Tensor | None = None


class BatchSource(Protocol):
    """What the training loop asks for step ``k``'s batch."""

    name: str
    event_shape: tuple[int, ...]
    num_classes: int

    def batch(self, step: int) -> Batch:
        """This rank's rows of step ``step``'s global batch."""
        ...

    def info(self) -> dict[str, Any]:
        """Plain JSON values for the run file."""
        ...

    def close(self) -> None:
        """Stop workers and close files."""
        ...


def rank_rows(batch_size: int, rank: int, world_size: int) -> slice:
    """The rows of the global batch that rank ``rank`` of ``world_size`` trains on."""
    if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
        raise ConfigError(
            f"batch_size {batch_size} must be a multiple of the {world_size} ranks (rank {rank})"
        )
    per = batch_size // world_size
    return slice(rank * per, (rank + 1) * per)


def _generator(seed: int, kind: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, kind, step))


@dataclass(frozen=True)
class IndexStream:
    """Step ``k``'s row indices and augmentation draws, from ``(seed, k)`` alone."""

    #: rows in the dataset
    n: int
    #: global batch size ``B``
    batch_size: int
    #: the run's seed
    seed: int
    #: draw a horizontal flip per row with p = ½
    flip: bool = False
    #: ``(h, w)`` of a random crop out of rows of ``(H, W)``, or ``None``
    crop: tuple[int, int] | None = None
    #: ``(H, W)`` of the rows (needed with ``crop``)
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.batch_size < 1:
            raise ConfigError(f"need n ≥ 1 and batch_size ≥ 1, got {self.n}, {self.batch_size}")
        if self.crop is not None:
            if self.image_size is None:
                raise ConfigError("crop needs image rows [C, H, W]")
            (h, w), (H, W) = self.crop, self.image_size
            if not (0 < h <= H and 0 < w <= W):
                raise ConfigError(f"crop {h}×{w} does not fit in images of {H}×{W}")

    def draws(self, step: int) -> StepDraws:
        """The global batch's draws for step ``step``."""
        if step < 0:
            raise ConfigError(f"step must be ≥ 0, got {step}")
        B = self.batch_size
        index = torch.randint(self.n, (B,), generator=_generator(self.seed, "index", step))
        u = torch.rand(B, generator=_generator(self.seed, "uncond", step))
        flip = crop = None
        if self.flip:
            flip = torch.rand(B, generator=_generator(self.seed, "flip", step)) < 0.5
        if self.crop is not None and self.image_size is not None:
            g = _generator(self.seed, "crop", step)
            top = torch.randint(self.image_size[0] - self.crop[0] + 1, (B,), generator=g)
            left = torch.randint(self.image_size[1] - self.crop[1] + 1, (B,), generator=g)
            crop = torch.stack([top, left], 1)
        return StepDraws(index, u, flip, crop)


def augment(x: Tensor, draws: StepDraws, crop: tuple[int, int] | None = None) -> Tensor:
    """Batch ``x`` ``[b, C, H, W]`` (any dtype, any device) with ``draws``' flips and crops."""
    if draws.flip is not None:
        flip = draws.flip.to(x.device, non_blocking=True).view(-1, *[1] * (x.ndim - 1))
        x = torch.where(flip, x.flip(-1), x)
    if draws.crop is not None and crop is not None:
        h, w = crop
        corner = draws.crop.to(x.device, non_blocking=True)
        rows = corner[:, :1] + torch.arange(h, device=x.device)  # [b, h]
        cols = corner[:, 1:] + torch.arange(w, device=x.device)  # [b, w]
        b = torch.arange(x.shape[0], device=x.device)[:, None, None]
        x = x.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # [b, h, w, C]
        x = x.permute(0, 3, 1, 2).contiguous()
    return x


# -- infinite streams of built-in generators ---------------------------------------------------


class ToyStream:
    """Fresh draws of a registered dataset every step: rows of step ``k`` are
    ``loader(B, seed=derive_seed(seed, "stream", k))`` (each toy's row ``i`` depends on its
    seed and ``i`` only), this rank's slice of them."""

    def __init__(
        self, dataset: str, batch_size: int, *, seed: int = 0, rank: int = 0,
        world_size: int = 1, device: torch.device | str = "cpu", key: str = "stream",
        **options: Any,
    ):  # fmt: skip
        from physgen.data import _check_options
        from physgen.registry import get_registry

        registry = get_registry()
        if dataset not in registry.names("datasets"):
            known = ", ".join(registry.names("datasets"))
            raise ConfigError(f"--n-data stream needs a built-in generator ({known}), "
                              f"not {dataset!r}")  # fmt: skip
        self.loader = registry.dataset(dataset).loader
        self.options = _check_options(f"dataset {dataset!r}", self.loader, options)
        self.name, self.seed, self.key, self.batch_size = dataset, seed, key, batch_size
        self.rows = rank_rows(batch_size, rank, world_size)
        self.device = torch.device(device)
        probe = self.loader(1, seed=seed, **self.options)
        self.event_shape = probe.event_shape
        self.num_classes = probe.num_classes
        self._info = {**probe.info, "stream": True, "seed": seed}

    def draw(self, step: int) -> tuple[Tensor, Tensor | None]:
        """Step ``step``'s global batch (CPU): ``(x [B, ...], labels [B] or None)``."""
        d = self.loader(self.batch_size, seed=derive_seed(self.seed, self.key, step),
                        **self.options)  # fmt: skip
        return d.x, d.labels

    def batch(self, step: int) -> Batch:
        """This rank's rows of step ``step``'s fresh batch, on the device."""
        x, labels = self.draw(step)
        u = torch.rand(self.batch_size, generator=_generator(self.seed, "uncond", step))
        put = self._put
        return Batch(put(x), None if labels is None else put(labels), put(u))

    def _put(self, t: Tensor) -> Tensor:
        return t[self.rows].to(self.device, non_blocking=True)

    def info(self) -> dict[str, Any]:
        """Plain JSON values for the run file."""
        return dict(self._info)

    def close(self) -> None:
        """Nothing to release."""


class PairStream:
    """Fresh (source, target) pairs each step for flow matching between two distributions
    (Tong et al. 2024's 8gaussians → moons): ``x0`` and ``x`` from two :class:`ToyStream` of
    independent derived seeds."""

    def __init__(
        self, source: str, target: str, batch_size: int, *, seed: int = 0, rank: int = 0,
        world_size: int = 1, device: torch.device | str = "cpu",
    ):  # fmt: skip
        kw: dict[str, Any] = dict(seed=seed, rank=rank, world_size=world_size, device=device)
        self.source = ToyStream(source, batch_size, key="source", **kw)
        self.target = ToyStream(target, batch_size, **kw)
        if self.source.event_shape != self.target.event_shape:
            raise ConfigError(f"source {source!r} draws {self.source.event_shape}, target "
                              f"{target!r} draws {self.target.event_shape}")  # fmt: skip
        self.name = f"{source}->{target}"
        self.event_shape, self.num_classes = self.target.event_shape, self.target.num_classes

    def batch(self, step: int) -> Batch:
        """This rank's rows of step ``step``'s pairs: ``x0`` source, ``x`` target."""
        b = self.target.batch(step)
        return Batch(b.x, b.labels, b.u, self.source.batch(step).x)

    def info(self) -> dict[str, Any]:
        """Plain JSON values for the run file."""
        return {"source": self.source.info(), "target": self.target.info(), "stream": True}

    def close(self) -> None:
        """Nothing to release."""
