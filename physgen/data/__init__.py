"""Datasets: the :class:`Dataset` value every loader returns, and :func:`load_dataset`.

A dataset is ``n`` float32 examples ``x: [n, *event_shape]``, optional int64 class ``labels:
[n]`` and an ``info`` dict of plain JSON values (source, seed, options) that a run file records.
Every array that becomes a dataset passes :func:`validate_array` first, so a NaN, a 1-D array
or a string column is one-line :class:`~physgen.errors.DataError` naming its source, never a
failure deep inside training.

Built-in datasets live in :mod:`physgen.data.toy2d` (listed in :data:`DATASETS`, registered by
the ``builtin`` plugin); user arrays (``.npy``, ``.npz``, ``.h5``/``.hdf5``) are read by
:mod:`physgen.data.files`. Plugins add datasets through the ``physgen_datasets`` hook.
"""

from __future__ import annotations

import inspect
import json
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physgen.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "FILE_SUFFIXES",
    "Dataset",
    "load_dataset",
    "validate_array",
    "validate_labels",
]

#: file types :func:`load_dataset` reads (see :mod:`physgen.data.files`)
FILE_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5")


@dataclass(frozen=True, eq=False)
class Dataset:
    """``n`` examples of one shape, with optional class labels.

    Construction validates and converts: ``x`` may be any numeric array-like and is stored as
    a float32 tensor; ``labels`` as int64. ``num_classes=0`` with labels means ``max + 1``.
    """

    name: str
    #: ``[n, *event_shape]`` float32, finite, ``n ≥ 1``
    x: Tensor
    #: ``[n]`` int64 in ``[0, num_classes)``, or ``None``
    labels: Tensor | None = None
    #: number of classes (0 when unlabelled)
    num_classes: int = 0
    #: plain JSON values: source, seed, options — enough to rebuild the dataset
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_json(self.name, self.info)
        source = str(self.info.get("source", self.name))
        x = validate_array(source, self.x)
        object.__setattr__(self, "x", x)
        if self.labels is None:
            if self.num_classes != 0:
                raise DataError(f"{source}: num_classes={self.num_classes} given without labels")
            return
        labels = validate_labels(source, self.labels, len(x))
        object.__setattr__(self, "labels", labels)
        top = int(labels.max())
        if self.num_classes == 0:
            object.__setattr__(self, "num_classes", top + 1)
        elif top >= self.num_classes:
            raise DataError(
                f"{source}: label {top} out of range for num_classes={self.num_classes}"
            )

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one example, ``x.shape[1:]``."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        classes = f", num_classes={self.num_classes}" if self.labels is not None else ""
        return f"Dataset({self.name!r}, n={len(self)}, event_shape={self.event_shape}{classes})"


# -- validation ------------------------------------------------------------------------------


def validate_array(source: str, array: Any) -> Tensor:
    """``array`` as a float32 tensor ``[n, ...]``, or a one-line :class:`DataError`.

    Checks, in order: numeric dtype (bool, int, float), rank ≥ 2, at least one row and one
    value per row, every value finite after conversion to float32. Tensors keep their device.
    ``source`` (a dataset name or file path) starts every message.
    """
    values = _as_numeric(source, array)
    if values.ndim < 2:
        shape = tuple(values.shape)
        hint = "reshape to [n, 1] for n scalar examples" if values.ndim == 1 else "need [n, ...]"
        raise DataError(f"{source}: array is {values.ndim}-D with shape {shape}; {hint}")
    if values.shape[0] == 0:
        raise DataError(f"{source}: array has 0 rows (shape {tuple(values.shape)})")
    if values[0].numel() == 0:
        raise DataError(f"{source}: examples are empty (shape {tuple(values.shape)})")
    x = values.to(torch.float32)
    _check_finite(source, x, values)
    return x


def validate_labels(source: str, labels: Any, n: int) -> Tensor:
    """``labels`` as an int64 tensor ``[n]`` of non-negative integers, or a :class:`DataError`.

    Integer-valued floats (as some tools write) are accepted; fractions are not.
    """
    values = _as_numeric(source, labels, what="labels")
    if values.ndim != 1 or values.shape[0] != n:
        raise DataError(
            f"{source}: labels have shape {tuple(values.shape)}, expected [{n}] (one per row)"
        )
    if values.is_floating_point():
        bad = ~torch.isfinite(values) | (values != values.round())
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise DataError(f"{source}: label {values[i].item()} at row {i} is not an integer")
    out = values.to(torch.int64)
    if bool((out < 0).any()):
        i = int((out < 0).nonzero()[0, 0])
        raise DataError(f"{source}: label {int(out[i])} at row {i} is negative")
    return out


def _as_numeric(source: str, array: Any, *, what: str = "array") -> Tensor:
    """A tensor view of ``array`` if its dtype is bool, integer or real float."""
    if isinstance(array, Tensor):
        t = array.detach()
        if t.is_complex() or not (t.is_floating_point() or t.dtype == torch.bool or _is_int(t)):
            raise DataError(f"{source}: {what} has dtype {t.dtype}; expected real numbers")
        return t
    try:
        a = np.asarray(array)
    except (ValueError, TypeError) as err:
        raise DataError(
            f"{source}: {what} is not a rectangular array ({_first_line(err)})"
        ) from None
    if a.dtype.kind not in "biuf":
        raise DataError(f"{source}: {what} has non-numeric dtype {a.dtype}; expected real numbers")
    if a.dtype.kind == "f" and a.dtype.itemsize > 8:  # float128: torch has no such dtype
        a = a.astype(np.float64)
    if a.dtype.kind == "u" and a.dtype.itemsize > 1:
        a = a.astype(np.float64)  # torch's wide unsigned dtypes support few operations
    return torch.from_numpy(np.ascontiguousarray(a).reshape(a.shape))  # 0-d stays 0-d


def _is_int(t: Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _check_finite(source: str, x: Tensor, original: Tensor) -> None:
    """One-line error naming the first row (and full index) holding NaN or ±inf."""
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    index = tuple(int(i) for i in bad.nonzero()[0])
    value = original[index].item()
    where = f"at row {index[0]}, index {index}"
    if np.isfinite(value):
        raise DataError(f"{source}: value {value!r} {where} overflows float32")
    raise DataError(f"{source}: non-finite value {value} {where}")


def _check_json(source: str, info: dict[str, Any]) -> None:
    if not isinstance(info, dict):
        raise DataError(f"{source}: info must be a dict, got {type(info).__name__}")
    try:
        json.dumps(info, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise DataError(f"{source}: info is not plain JSON ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _check_n(n: Any) -> int:
    """``n`` as a positive int, else a one-line ConfigError."""
    try:
        if isinstance(n, bool):
            raise TypeError
        value = operator.index(n)
    except TypeError:
        raise ConfigError(f"n must be a positive integer, got {n!r}") from None
    if value < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    return value


# -- lookup ----------------------------------------------------------------------------------


def load_dataset(spec: str, n: int, *, seed: int = 0, **options: Any) -> Dataset:
    """The dataset ``spec``: a registered name (``moons``, ``gmm``, a plugin's) or a file path.

    Names are looked up in the plugin registry and called as ``loader(n, seed=seed,
    **options)``; a path ending in one of :data:`FILE_SUFFIXES` is read by
    :func:`physgen.data.files.load_file` (first ``n`` rows; options ``key``, ``labels_key``),
    a directory by :func:`physgen.data.images.load_folder` (PNG/JPEG, option ``flip``).
    Anything else is a one-line :class:`ConfigError` listing both.
    """
    from physgen.core.validate import check_int, check_path
    from physgen.registry import get_registry

    _check_n(n)
    check_int("seed", seed, min=0)
    registry = get_registry()
    spec = str(check_path("spec", spec))
    if spec in registry.names("datasets") or spec in registry.conflicts("datasets"):
        from physgen.registry import plugin_call

        loader = registry.dataset(spec).loader
        with plugin_call(registry.plugin_of("datasets", spec), f"dataset {spec!r}") as call:
            options = _check_options(f"dataset {spec!r}", loader, options)
            data = loader(n, seed=seed, **options)
            if not isinstance(data, Dataset):
                raise call.error(f"returned {type(data).__name__}, expected physgen.data.Dataset")
        return data
    if Path(spec).suffix.lower() in FILE_SUFFIXES:
        from physgen.data.files import load_file

        options = _check_options(f"file {spec!r}", load_file, options)
        return load_file(spec, n, **options)
    if Path(spec).is_dir():
        from physgen.data.images import load_folder

        options = _check_options(f"folder {spec!r}", load_folder, options)
        return load_folder(spec, n, seed=seed, **options)
    known = ", ".join(registry.names("datasets")) or "none installed"
    raise ConfigError(
        f"unknown dataset {spec!r}: not a registered name (available: {known}) "
        f"nor a file path ending in {', '.join(FILE_SUFFIXES)} nor a folder of images"
    )


def _check_options(what: str, loader: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``loader``'s keyword parameters (an unknown one is a
    one-line ConfigError naming those accepted), strings converted to the type of each
    parameter's default (``flip=true`` from the command line)."""
    from physgen.core.options import typed_options

    try:
        params = inspect.signature(loader).parameters.values()
    except (TypeError, ValueError):
        return options
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return options
    named = [p for p in list(params)[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    empty = inspect.Parameter.empty
    accepted = {p.name: None if p.default is empty else p.default for p in named}
    accepted.pop("seed", None)
    return typed_options(what, options, accepted)


# toy2d and images build Datasets, so they are imported once Dataset exists.
from physgen.data.images import DATASETS as _IMAGE_DATASETS  # noqa: E402
from physgen.data.toy2d import DATASETS as _TOY_DATASETS  # noqa: E402

#: the built-in datasets, handed to the ``physgen_datasets`` hook by :mod:`physgen.registry.builtin`
DATASETS = [*_TOY_DATASETS, *_IMAGE_DATASETS]
