"""User arrays as datasets: ``.npy``, ``.npz`` and HDF5 (``.h5``, ``.hdf5``) files.

Each file holds ``x: [n, *event_shape]`` (any real numeric dtype; stored as float32) and
optionally integer ``labels: [n]``:

- ``.npy``: the one array is ``x``.
- ``.npz``: the array ``x`` (or the only array; ``key=`` names another); labels under
  ``labels`` or ``y`` (``labels_key=`` names another).
- ``.h5``/``.hdf5``: the dataset ``x`` (or the only dataset, at any depth; ``key=`` names
  another, e.g. ``"group/images"``); labels as for ``.npz``.

Images are ``[n, C, H, W]``; a uint8 array of that rank is read as 8-bit pixels and mapped
from 0…255 to ``[-1, 1]`` (``info["scale"]`` says so); other dtypes are kept as stored.

Pickles are never executed: headers are read first and an object dtype is refused before any
data is touched (and every read passes ``allow_pickle=False``). A missing, truncated or
corrupt file, a wrong rank or dtype, an empty array or a NaN is a one-line
:class:`~physgen.errors.DataError` naming the file. ``n`` keeps the first ``n`` rows (all when
``None`` or larger); only those rows are read from ``.npy`` and HDF5 files, and only they are
validated.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np

from physgen.data import (
    FILE_SUFFIXES,
    Dataset,
    _check_n,
    _first_line,
    validate_array,
    validate_labels,
)
from physgen.errors import ConfigError, DataError

__all__ = ["load_file", "load_h5", "load_npy", "load_npz"]

#: keys tried, in order, for labels when ``labels_key`` is not given
LABEL_KEYS = ("labels", "y")

#: errors the readers raise on bad bytes; each becomes a one-line DataError
_READ_ERRORS = (OSError, ValueError, EOFError, TypeError, KeyError, RuntimeError, zlib.error)


def load_file(
    path: str | os.PathLike[str],
    n: int | None = None,
    *,
    key: str | None = None,  # array / HDF5 dataset holding x (default: "x" or the only one)
    labels_key: str | None = None,  # array / dataset holding labels (default: "labels" or "y")
) -> Dataset:
    """The dataset stored in ``path``, by suffix; first ``n`` rows (all when ``None``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if key is not None or labels_key is not None:
            raise ConfigError(f"{path}: a .npy file holds one array; key/labels_key do not apply")
        return load_npy(path, n)
    if suffix == ".npz":
        return load_npz(path, n, key=key, labels_key=labels_key)
    if suffix in (".h5", ".hdf5"):
        return load_h5(path, n, key=key, labels_key=labels_key)
    raise ConfigError(f"{path}: unsupported file type {suffix!r} (supported: {FILE_SUFFIXES})")


# -- .npy ------------------------------------------------------------------------------------


def load_npy(path: str | os.PathLike[str], n: int | None = None) -> Dataset:
    """``x: [n, ...]`` from a ``.npy`` file; only the first ``n`` rows are read (memory map)."""
    path, n = _existing(path), _rows(n)
    with _opened(path) as f:
        shape, _, dtype = _npy_header(f, str(path))
        data_bytes = path.stat().st_size - f.tell()
    expected = int(np.prod(shape)) * dtype.itemsize
    if data_bytes < expected:
        raise DataError(f"{path}: file is truncated ({data_bytes} of {expected} data bytes)")
    _check_memory(str(path), shape, n, dtype)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        rows = np.array(array[:n] if array.ndim else array)
    except _READ_ERRORS as err:
        raise DataError(f"{path}: unreadable .npy file ({_first_line(err)})") from None
    return _dataset(path, "npy", rows, None, shape, {})


def _npy_header(f: IO[bytes], source: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` from a .npy header; refuses object (pickle) dtypes."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DataError(f"{source}: unsupported .npy format version {version}")
    except DataError:
        raise
    except (*_READ_ERRORS, SyntaxError) as err:
        raise DataError(f"{source}: not a valid .npy array ({_first_line(err)})") from None
    _check_dtype(source, dtype)
    return tuple(shape), bool(fortran), dtype


def _check_dtype(source: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise DataError(
            f"{source}: holds pickled Python objects (dtype {dtype}); refusing to load it "
            "(only numeric arrays are read)"
        )
    if dtype.kind not in "biuf":
        raise DataError(f"{source}: non-numeric dtype {dtype}; expected real numbers")


# -- .npz ------------------------------------------------------------------------------------


def load_npz(
    path: str | os.PathLike[str],
    n: int | None = None,
    *,
    key: str | None = None,
    labels_key: str | None = None,
) -> Dataset:
    """``x`` (and labels) from the arrays of a ``.npz`` archive; see the module docstring."""
    path, n = _existing(path), _rows(n)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {m[: -len(".npy")]: m for m in archive.namelist() if m.endswith(".npy")}
            x_key, l_key = _pick_keys(str(path), members, key, labels_key)
            x = _npz_member(archive, members[x_key], f"{path}[{x_key!r}]")
            labels = None
            if l_key is not None:
                labels = _npz_member(archive, members[l_key], f"{path}[{l_key!r}]")
    except DataError:
        raise
    except (zipfile.BadZipFile, *_READ_ERRORS) as err:
        raise DataError(f"{path}: unreadable .npz file ({_first_line(err)})") from None
    rows = x[:n] if x.ndim else x
    return _dataset(path, "npz", rows, labels, x.shape, {"key": x_key, "labels_key": l_key})


def _npz_member(archive: zipfile.ZipFile, member: str, source: str) -> np.ndarray:
    """One array of the archive: header checked (no pickles) before its data is read."""
    with archive.open(member) as f:
        shape, _, dtype = _npy_header(f, source)
        data_bytes = archive.getinfo(member).file_size - f.tell()
    expected = int(np.prod(shape)) * dtype.itemsize
    if data_bytes < expected:  # checked before read_array allocates the full array
        raise DataError(f"{source}: array is truncated ({data_bytes} of {expected} data bytes)")
    _check_memory(source, shape, None, dtype)
    with archive.open(member) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


# -- HDF5 ------------------------------------------------------------------------------------


def load_h5(
    path: str | os.PathLike[str],
    n: int | None = None,
    *,
    key: str | None = None,
    labels_key: str | None = None,
) -> Dataset:
    """``x`` (and labels) from the datasets of an HDF5 file; only the first ``n`` rows are read."""
    path, n = _existing(path), _rows(n)
    try:
        with h5py.File(path, "r") as h5:
            x_key, l_key = _pick_keys(str(path), _h5_datasets(h5), key, labels_key)
            x, shape = _h5_rows(h5[x_key], n, f"{path}[{x_key!r}]")
            labels = None
            if l_key is not None:
                labels, _ = _h5_rows(h5[l_key], None, f"{path}[{l_key!r}]")
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise DataError(f"{path}: not a readable HDF5 file ({_first_line(err)})") from None
    return _dataset(path, "hdf5", x, labels, shape, {"key": x_key, "labels_key": l_key})


def _h5_datasets(h5: h5py.File) -> list[str]:
    """Paths of every dataset in the file, at any depth (``"x"``, ``"group/images"``)."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(name)

    h5.visititems(visit)
    return found


def _h5_rows(ds: h5py.Dataset, n: int | None, source: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """The first ``n`` rows of ``ds`` and its full shape; dtype checked before reading."""
    _check_dtype(source, ds.dtype)
    _check_memory(source, tuple(ds.shape), n, ds.dtype)
    _check_chunks(source, ds, n)
    try:
        rows = ds[()] if ds.ndim == 0 else ds[:n]
    except _READ_ERRORS as err:
        raise DataError(f"{source}: unreadable HDF5 dataset ({_first_line(err)})") from None
    return np.asarray(rows), tuple(ds.shape)


# -- shared ----------------------------------------------------------------------------------


def _check_memory(source: str, shape: tuple[int, ...], n: int | None, dtype: np.dtype) -> None:
    """Refuse, before reading, an array whose first ``n`` rows (as stored plus their float32
    copy) would need more than half of this machine's physical memory: a header claiming
    huge dimensions is a one-line error, not an out-of-memory kill."""
    rows = 1 if not shape else shape[0] if n is None else min(shape[0], n)
    values = rows * int(np.prod(shape[1:], dtype=object))
    need = values * (dtype.itemsize + 4)
    limit = _memory_limit()
    if limit is not None and need > limit:
        raise DataError(
            f"{source}: {rows} rows of shape {tuple(shape[1:])} need {need / 2**30:.3g} GiB to "
            f"load, more than half of this machine's memory ({2 * limit / 2**30:.3g} GiB); "
            "load fewer rows"
        )


#: most HDF5 chunks one load may touch: the HDF5 library spends ~4 KB of bookkeeping per chunk
#: read (measured: 1e6 chunks of one value each need ~4 GB), so a file stored in tiny chunks is
#: refused before the read rather than killed for memory during it
MAX_H5_CHUNKS = 100_000


def _check_chunks(source: str, ds: h5py.Dataset, n: int | None) -> None:
    """Refuse a read of the first ``n`` rows of ``ds`` that touches more than
    :data:`MAX_H5_CHUNKS` chunks."""
    if ds.chunks is None or ds.ndim == 0:
        return
    extent = [ds.shape[0] if n is None else min(ds.shape[0], n), *ds.shape[1:]]
    touched = 1
    for size, chunk in zip(extent, ds.chunks, strict=True):
        touched *= -(-int(size) // int(chunk))
    if touched > MAX_H5_CHUNKS:
        raise DataError(
            f"{source}: reading {extent[0]} rows touches {touched} HDF5 chunks of shape "
            f"{tuple(ds.chunks)} (at most {MAX_H5_CHUNKS}); rewrite it with larger chunks "
            "(h5py: chunks=True) or load fewer rows"
        )


def _memory_limit() -> int | None:
    """Half the physical memory in bytes, or None where the OS does not say (Windows)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (AttributeError, ValueError, OSError):
        return None


def _rows(n: int | None) -> int | None:
    """How many rows to keep: ``None`` (all) or a positive int."""
    return None if n is None else _check_n(n)


def _existing(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    return path


class _opened:
    """``open(path, "rb")`` whose OSError is a one-line DataError naming the file."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> IO[bytes]:
        try:
            self.f = open(self.path, "rb")
        except OSError as err:
            raise DataError(f"{self.path}: cannot open ({_first_line(err)})") from None
        return self.f

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def _pick_keys(
    source: str, names: Iterable[str], key: str | None, labels_key: str | None
) -> tuple[str, str | None]:
    """Which stored array is ``x`` and which (if any) holds labels."""
    names = list(names)
    listed = ", ".join(names) or "none"
    for wanted in (key, labels_key):
        if wanted is not None and wanted not in names:
            raise DataError(f"{source}: no array {wanted!r} (arrays: {listed})")
    if key is None:
        candidates = [k for k in names if k not in LABEL_KEYS and k != labels_key]
        if "x" in names:
            key = "x"
        elif len(candidates) == 1:
            key = candidates[0]
        else:
            raise DataError(f"{source}: no array 'x' and not exactly one other (arrays: {listed})")
    if labels_key is None:
        labels_key = next((k for k in LABEL_KEYS if k in names and k != key), None)
    return key, labels_key


def _dataset(
    path: Path,
    fmt: str,
    x: np.ndarray,
    labels: np.ndarray | None,
    shape: tuple[int, ...],
    keys: dict[str, Any],
) -> Dataset:
    """The validated :class:`Dataset` from the first rows ``x`` of the stored array of full
    ``shape`` and all stored ``labels`` (checked against every row; ``num_classes`` counts
    them all, then they are cut to the rows kept)."""
    scaled = x.dtype == np.uint8 and x.ndim == 4
    if scaled:  # 8-bit images [n, C, H, W]: 0…255 -> [-1, 1], as image folders are read
        x = x.astype(np.float32) / 127.5 - 1
    tensor = validate_array(f"{path}[{keys['key']!r}]" if keys.get("key") else str(path), x)
    classes, kept = 0, None
    if labels is not None:
        full = validate_labels(f"{path}[{keys['labels_key']!r}]", labels, shape[0])
        classes, kept = int(full.max()) + 1, full[: len(tensor)]
    info = {"source": str(path), "format": fmt, **keys, "rows": int(shape[0]), "n": len(tensor)}
    if scaled:
        info["scale"] = "uint8 v/127.5 - 1"
    return Dataset(path.name, tensor, kept, classes, info)
