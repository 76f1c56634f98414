"""Datasets read lazily, row by row: memory-mapped ``.npy``, HDF5 datasets and image folders.

These are map-style :class:`torch.utils.data.Dataset` objects for data that does not fit in
memory (or should not be decoded up front). Nothing but the header, the labels and the file
list is read at start-up; rows are read when a batch asks for them, in the process that asks
(a :class:`~torch.utils.data.DataLoader` worker or the main process). File handles are opened
per process on first use and never pickled, so workers started by ``fork`` or ``spawn`` each
open their own (h5py handles must not cross a fork).

**Dtype.** Rows keep the source dtype: 8-bit images stay ``uint8`` through the workers, the
pinned host buffer and the copy to the device, where :func:`to_model_range` maps them to
``[-1, 1]`` (``v / 127.5 − 1``, the range DDPM and EDM train on, Ho et al. 2020 §3.3: the
same map as :mod:`physgen.data.images`). Four times less to read, copy and pin than float32.
Float rows are checked finite as they are read (a NaN is one line naming the row).

**Bad input.** A row that cannot be read (a corrupt image in the middle of a large folder, a
file of another size or mode, a NaN) *stops* the run with one line naming the file or row.
It is not skipped: skipping would silently change the distribution and make step ``k``'s batch
depend on which files happened to be bad. Errors are caught inside the worker and returned as
a value (:class:`RowBatch` ``error``), so the main process raises a one-line
:class:`~physgen.errors.DataError`, never a worker traceback.

**Batched reads.** ``__getitems__`` (called by the DataLoader with a whole batch of indices)
reads the rows in increasing order — one pass over a memory map, one point selection in HDF5 —
and puts them back in the batch's order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

from physgen.data import _first_line
from physgen.errors import ConfigError, DataError

__all__ = ["H5Rows", "ImageFolderRows", "LazyRows", "NpyRows", "RowBatch", "open_rows",
           "to_model_range"]  # fmt: skip


@dataclass
class RowBatch:
    """What a worker hands back for one batch: rows in the source dtype, or the error."""

    #: ``[b, *event_shape]`` in the source dtype (empty when ``error`` is set)
    x: Tensor
    #: ``[b]`` int64, or ``None`` for unlabelled data
    labels: Tensor | None = None
    #: one line naming the file or row that could not be read
    error: str | None = None

    def pin_memory(self) -> RowBatch:
        """Page-locked copies (the DataLoader's pin thread calls this on CUDA)."""
        labels = None if self.labels is None else self.labels.pin_memory()
        return RowBatch(self.x.pin_memory(), labels, self.error)


def to_model_range(x: Tensor) -> Tensor:
    """``uint8`` pixels mapped to float32 ``[-1, 1]`` (``v / 127.5 − 1``); float data as float32."""
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1.0)
    return x.float()


class LazyRows(TorchDataset[Tensor]):
    """The common part: shape, dtype, labels, per-process handles and batched reads.

    Subclasses set ``shape`` (all rows), ``dtype`` and ``labels`` in ``__init__`` and implement
    ``_open`` (a handle for this process) and ``_read`` (rows at sorted unique indices).
    """

    name: str
    source: str
    shape: tuple[int, ...]
    dtype: np.dtype
    labels: np.ndarray | None = None
    classes: list[str] | None = None

    def __init__(self) -> None:
        self._handle: Any = None
        self._pid = -1

    # -- shape and meta ----------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one row."""
        return tuple(self.shape[1:])

    @property
    def num_classes(self) -> int:
        """``max(label) + 1`` (0 when unlabelled)."""
        return 0 if self.labels is None else int(self.labels.max()) + 1

    @property
    def is_image(self) -> bool:
        """``[C, H, W]`` rows of 8-bit pixels."""
        return len(self.event_shape) == 3 and self.dtype == np.uint8

    def info(self) -> dict[str, Any]:
        """Plain JSON values for the run file."""
        return {"source": self.source, "format": type(self).__name__, "rows": len(self),
                "dtype": str(self.dtype), "lazy": True,
                **({"classes": self.classes} if self.classes else {})}  # fmt: skip

    # -- reading -----------------------------------------------------------------------------

    def handle(self) -> Any:
        """This process's open handle (reopened after a fork)."""
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = self._open(), os.getpid()
        return self._handle

    def close(self) -> None:
        """Drop this process's handle (workers forked later open their own)."""
        if self._handle is not None and self._pid == os.getpid():
            close = getattr(self._handle, "close", None)
            if callable(close):
                close()
        self._handle, self._pid = None, -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_pid": -1}  # never pickle a handle

    def __getitem__(self, index: int) -> Tensor:
        batch = self.__getitems__([index])
        if batch.error is not None:
            raise DataError(batch.error)
        return batch.x[0]

    def __getitems__(self, indices: list[int]) -> RowBatch:
        """Rows ``indices`` (any order, repeats allowed) as one :class:`RowBatch`."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            return RowBatch(torch.empty(0), None, f"{self.source}: row index out of range")
        unique, inverse = np.unique(idx, return_inverse=True)
        try:
            rows = self._read(unique)[inverse]
            if rows.dtype.kind == "f":
                _check_finite_rows(self.source, rows, idx)
        except DataError as err:
            return RowBatch(torch.empty(0), None, str(err))
        labels = None if self.labels is None else torch.from_numpy(self.labels[idx])
        return RowBatch(torch.from_numpy(np.ascontiguousarray(rows)), labels)

    def _open(self) -> Any:
        raise NotImplementedError

    def _read(self, sorted_unique: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _check_finite_rows(source: str, rows: np.ndarray, idx: np.ndarray) -> None:
    bad = ~np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{source}: non-finite value in row {int(idx[int(np.argmax(bad))])}")


def _check_dtype(source: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    if dtype.kind not in "biuf":
        raise DataError(f"{source}: non-numeric dtype {dtype}; expected real numbers")
    if len(shape) < 2 or shape[0] == 0:
        raise DataError(f"{source}: need a non-empty array [n, ...], got shape {shape}")


def _pread_rows(
    f: Any, offset: int, dtype: np.dtype, event_shape: tuple[int, ...], idx: np.ndarray,
    source: str,
) -> np.ndarray:  # fmt: skip
    """Rows ``idx`` of a C-ordered array stored raw at byte ``offset`` of the open file ``f``,
    one ``pread`` each. Unlike reading through a memory map, this leaves no file pages mapped
    into the process: its RSS stays flat however much of a large file a long run reads (a
    mapped read also maps the neighbouring 64 KB the kernel faults in around each row)."""
    row = int(np.prod(event_shape, dtype=np.int64)) * dtype.itemsize
    out = np.empty((len(idx), row), dtype=np.uint8)
    fd = f.fileno()
    for j, i in enumerate(idx.tolist()):
        chunk = os.pread(fd, row, offset + i * row)
        if len(chunk) != row:
            raise DataError(f"{source}: file is truncated (row {i} is incomplete)")
        out[j] = np.frombuffer(chunk, dtype=np.uint8)
    rows = out.view(dtype).reshape(len(idx), *event_shape)
    return rows if dtype.isnative else rows.astype(dtype.newbyteorder("="))


class NpyRows(LazyRows):
    """Rows of a ``.npy`` file. The header is read by ``np.load(mmap_mode="r")`` (which
    refuses pickles and truncated files); C-ordered rows are then read with ``pread`` at the
    array's offset (see :func:`_pread_rows`), Fortran-ordered ones through the memory map."""

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__()
        self.source, self.name = str(path), Path(path).stem
        try:
            mm = np.load(self.source, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise DataError(f"{self.source}: unreadable .npy file ({_first_line(err)})") from None
        self.shape, self.dtype = tuple(mm.shape), mm.dtype
        _check_dtype(self.source, self.dtype, self.shape)
        self.offset = int(mm.offset) if mm.flags.c_contiguous else None
        del mm

    def _open(self) -> Any:
        if self.offset is None:
            return np.load(self.source, mmap_mode="r", allow_pickle=False)
        return open(self.source, "rb", buffering=0)  # closed by close()

    def _read(self, sorted_unique: np.ndarray) -> np.ndarray:
        if self.offset is None:
            rows = np.asarray(self.handle()[sorted_unique])
            return rows if rows.dtype.isnative else rows.astype(rows.dtype.newbyteorder("="))
        return _pread_rows(self.handle(), self.offset, self.dtype, self.event_shape,
                           sorted_unique, self.source)  # fmt: skip


class H5Rows(LazyRows):
    """Rows of an HDF5 dataset (``key``, default ``x``); labels (``labels_key``, default
    ``labels`` or ``y`` when present) are read once, at start-up. A contiguous, unfiltered
    dataset (HDF5's default layout) is read with ``pread`` at its byte offset
    (``Dataset.id.get_offset()``): HDF5 would read a 64 KB sieve buffer around every 3 KB row.
    Chunked or compressed datasets are read through h5py, one point selection per batch."""

    def __init__(self, path: str | os.PathLike[str], *, key: str = "x",
                 labels_key: str | None = None):  # fmt: skip
        import h5py

        super().__init__()
        self.source, self.name, self.key = str(path), Path(path).stem, key
        try:
            with h5py.File(self.source, "r") as f:
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    raise DataError(f"{self.source}: no HDF5 dataset {key!r}")
                self.shape, self.dtype = tuple(f[key].shape), f[key].dtype
                raw = f[key].chunks is None and f[key].compression is None
                offset = f[key].id.get_offset() if raw else None
                self.offset = None if offset is None else int(offset)
                names = [labels_key] if labels_key else [k for k in ("labels", "y") if k in f]
                if names:
                    self.labels = self._labels(f, names[0])
        except OSError as err:
            raise DataError(f"{self.source}: unreadable HDF5 file ({_first_line(err)})") from None
        _check_dtype(self.source, self.dtype, self.shape)

    def _labels(self, f: Any, name: str) -> np.ndarray:
        from physgen.data import validate_labels

        if name not in f:
            raise DataError(f"{self.source}: no HDF5 dataset {name!r} for labels")
        return validate_labels(self.source, f[name][()], self.shape[0]).numpy()

    def _open(self) -> Any:
        import h5py

        if self.offset is not None:
            return open(self.source, "rb", buffering=0)  # closed by close()
        return h5py.File(self.source, "r")

    def _read(self, sorted_unique: np.ndarray) -> np.ndarray:
        if self.offset is not None:
            return _pread_rows(self.handle(), self.offset, self.dtype, self.event_shape,
                               sorted_unique, self.source)  # fmt: skip
        try:
            rows = np.asarray(self.handle()[self.key][sorted_unique])
            return rows if rows.dtype.isnative else rows.astype(rows.dtype.newbyteorder("="))
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{self.source}: unreadable rows ({_first_line(err)})") from None


class ImageFolderRows(LazyRows):
    """PNG/JPEG files under a folder, decoded when read (in the DataLoader's workers), as
    ``uint8 [C, H, W]``. Layout, labels (one sub-folder per class) and modes as
    :func:`physgen.data.images.load_folder`; only the first file's header is read at start-up,
    and a file of another size or mode is a one-line error when it is read."""

    def __init__(self, path: str | os.PathLike[str]):
        from physgen.data.images import _MODES, _header, _listing

        super().__init__()
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"{root}: folder not found")
        self.source, self.name = str(root), root.name
        self.files, labels, classes = _listing(root)
        _, (w, h), self.mode = _header(self.files[0], None, None)
        self.shape = (len(self.files), _MODES[self.mode], h, w)
        self.dtype = np.dtype(np.uint8)
        if classes:
            self.labels, self.classes = np.asarray(labels, dtype=np.int64), classes

    def _open(self) -> None:
        return None

    def _read(self, sorted_unique: np.ndarray) -> np.ndarray:
        from physgen.data.images import _pixels

        out = np.empty((len(sorted_unique), *self.event_shape), dtype=np.uint8)
        for j, i in enumerate(sorted_unique):
            file = self.files[int(i)]
            pixels = _pixels(file, self.mode)  # corrupt bytes: DataError naming the file
            if pixels.shape != (*self.event_shape[1:], self.event_shape[0]):
                h, w = pixels.shape[:2]
                raise DataError(
                    f"{file}: size {w}×{h} differs from {self.shape[3]}×{self.shape[2]} of "
                    f"{self.files[0]}; all images must share one size"
                )
            out[j] = pixels.transpose(2, 0, 1)
        return out


def open_rows(spec: str | os.PathLike[str], **options: Any) -> LazyRows:
    """The lazy dataset for a path: ``.npy`` → :class:`NpyRows`, ``.h5``/``.hdf5`` →
    :class:`H5Rows` (options ``key``, ``labels_key``), a folder → :class:`ImageFolderRows`."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if path.is_dir():
        rows: LazyRows = ImageFolderRows(path, **options)
    elif suffix == ".npy":
        rows = NpyRows(path, **options)
    elif suffix in (".h5", ".hdf5"):
        rows = H5Rows(path, **options)
    elif not path.exists():
        raise DataError(f"{path}: file not found")
    else:
        raise ConfigError(
            f"{path}: lazy reading supports .npy, .h5/.hdf5 and image folders, not {suffix!r}"
        )
    return rows
