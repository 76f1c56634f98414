"""Batches of a lazy dataset for training: a :class:`torch.utils.data.DataLoader` driven by the
deterministic index stream (:mod:`physgen.data.stream`).

:class:`LoaderSource` answers "step ``k``'s batch": its batch sampler yields, for steps
``k, k+1, …``, this rank's rows of :meth:`IndexStream.draws` ``(k)``; ``workers`` DataLoader
processes read them (:mod:`physgen.data.lazy`) ahead of the loop (``prefetch`` batches each);
on CUDA the rows land in page-locked memory and are copied with ``non_blocking=True``. On the
device the batch is augmented (flip, crop) in the source dtype and mapped to the model's range.
Asking for a step other than the next one (a resume, a jump) restarts the loader there; there
is nothing else to restore.

Workers draw no random numbers (every draw is made in the main process from ``(seed, k)``), so
the batches do not depend on the number of workers; the DataLoader's own ``generator`` is
still seeded from the run's seed (``derive_seed(seed, "workers")``) so that a user transform
that draws from torch's global RNG in a worker is reproducible for a given worker count.

:func:`make_source` is the one entry point: a built-in generator with ``n="stream"`` gives a
:class:`~physgen.data.stream.ToyStream`; a ``.npy``/HDF5 file or an image folder gives a
:class:`LoaderSource` over its lazy rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from physgen.core.rng import derive_seed
from physgen.data.lazy import LazyRows, RowBatch, open_rows, to_model_range
from physgen.data.stream import Batch, BatchSource, IndexStream, ToyStream, augment, rank_rows
from physgen.errors import ConfigError, DataError

__all__ = ["LoaderSource", "Streamed", "make_source"]


class _StepSampler:
    """This rank's row indices of steps ``start, start+1, …`` (forever)."""

    def __init__(self, stream: IndexStream, start: int, rows: slice):
        self.stream, self.start, self.rows = stream, start, rows

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            yield self.stream.draws(step).index[self.rows].tolist()
            step += 1


def _keep(batch: RowBatch) -> RowBatch:
    return batch  # __getitems__ already built the batch


class LoaderSource:
    """Step ``k``'s batch of a :class:`~physgen.data.lazy.LazyRows`, read by DataLoader workers."""

    def __init__(
        self, rows: LazyRows, batch_size: int, *, seed: int = 0, rank: int = 0,
        world_size: int = 1, device: torch.device | str = "cpu", workers: int = 0,
        prefetch: int = 4, flip: bool = False, crop: int | None = None,
    ):  # fmt: skip
        if workers < 0:
            raise ConfigError(f"workers must be ≥ 0, got {workers}")
        if (flip or crop) and not rows.is_image:
            shape = list(rows.event_shape)
            raise ConfigError(
                f"{rows.source}: flip/crop need uint8 images [C, H, W], "
                f"got {rows.dtype} rows of shape {shape}"
            )
        self.rows, self.device = rows, torch.device(device)
        self.name, self.num_classes = rows.name, rows.num_classes
        size = tuple(rows.event_shape[1:]) if rows.is_image else None
        self.crop = (crop, crop) if crop else None
        self.stream = IndexStream(len(rows), batch_size, seed, flip=flip, crop=self.crop,
                                  image_size=size)  # type: ignore[arg-type]  # fmt: skip
        self.part = rank_rows(batch_size, rank, world_size)
        event = rows.event_shape
        self.event_shape: tuple[int, ...] = (event[0], *self.crop) if self.crop else event
        self.seed, self.workers, self.prefetch = seed, workers, prefetch
        self._it: Iterator[RowBatch] | None = None
        self._next = -1

    def _loader(self, start: int) -> DataLoader[Any]:
        if self.workers:
            self.rows.close()  # each worker opens its own handle
        cuda = self.device.type == "cuda"
        return DataLoader(
            self.rows,
            batch_sampler=_StepSampler(self.stream, start, self.part),
            collate_fn=_keep,  # type: ignore[arg-type]  # __getitems__ returns the batch
            num_workers=self.workers,
            pin_memory=cuda,
            prefetch_factor=self.prefetch if self.workers else None,
            generator=torch.Generator().manual_seed(derive_seed(self.seed, "workers")),
        )

    def batch(self, step: int) -> Batch:
        """This rank's rows of step ``step``'s batch, augmented, float32 on the device."""
        if self._it is None or step != self._next:
            self.close()
            self._it = iter(self._loader(step))
        rows = next(self._it)
        self._next = step + 1
        if rows.error is not None:
            self.close()
            raise DataError(rows.error)
        draws = self.stream.draws(step).rows(self.part)
        x = rows.x.to(self.device, non_blocking=True)
        x = to_model_range(augment(x, draws, self.crop))
        labels = None if rows.labels is None else rows.labels.to(self.device, non_blocking=True)
        return Batch(x, labels, draws.u.to(self.device, non_blocking=True))

    def info(self) -> dict[str, Any]:
        """Plain JSON values for the run file."""
        return {**self.rows.info(), "flip": self.stream.flip, "crop": list(self.crop or ())}

    def close(self) -> None:
        """Stop the workers (a later :meth:`batch` starts new ones)."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()


def make_source(
    dataset: str, n: int | str | None, batch_size: int, *, seed: int = 0, rank: int = 0,
    world_size: int = 1, device: torch.device | str = "cpu", workers: int = 0,
    flip: bool = False, crop: int | None = None, **options: Any,
) -> BatchSource:  # fmt: skip
    """The streamed batch source for ``dataset``: a :class:`ToyStream` for a registered
    generator (``n`` must be ``None`` or ``"stream"``), else a :class:`LoaderSource` over the
    file or folder (``n`` is ignored: every row is used, read lazily)."""
    from physgen.registry import get_registry

    kw: dict[str, Any] = dict(seed=seed, rank=rank, world_size=world_size, device=device)
    if dataset in get_registry().names("datasets"):
        if n not in (None, "stream"):
            raise ConfigError(f"dataset {dataset!r}: stream needs n unset or 'stream', got {n!r}")
        if flip or crop:
            raise ConfigError(f"dataset {dataset!r}: flip/crop apply to image files only")
        return ToyStream(dataset, batch_size, **kw, **options)
    rows = open_rows(dataset, **options)
    return LoaderSource(rows, batch_size, workers=workers, flip=flip, crop=crop, **kw)


@dataclass
class Streamed:
    """A dataset to stream, named but not yet placed: what :func:`physgen.train` takes as
    ``data`` to train on the (seed, step) stream. The loop calls :meth:`open` with the run's
    batch size, seed, rank, device and workers. ``name``, ``event_shape``, ``num_classes``,
    ``size`` (rows, or ``"stream"`` for fresh draws) and ``info`` describe it in the checkpoint.
    """

    #: a registered generator (fresh draws each step) or a ``.npy``/HDF5 file or image folder
    dataset: str
    #: dataset options (a generator's ``noise``, a file's ``key``, ...)
    options: dict[str, Any] = field(default_factory=dict)
    #: random horizontal flips, p = ½ (images)
    flip: bool = False
    #: random crops of ``crop × crop`` pixels (images), or ``None``
    crop: int | None = None

    def __post_init__(self) -> None:
        probe = self.open(1, seed=0)
        self.name, self.event_shape = probe.name, probe.event_shape
        self.num_classes = probe.num_classes
        self.size: int | str = len(probe.rows) if isinstance(probe, LoaderSource) else "stream"
        self.info = {**probe.info(), "stream": True}
        probe.close()
        if isinstance(probe, LoaderSource):
            probe.rows.close()

    def open(
        self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
        device: torch.device | str = "cpu", workers: int = 0,
    ) -> BatchSource:  # fmt: skip
        """The batch source of a run."""
        return make_source(
            self.dataset, None, batch_size, seed=seed, rank=rank, world_size=world_size,
            device=device, workers=workers, flip=self.flip, crop=self.crop, **self.options,
        )  # fmt: skip
