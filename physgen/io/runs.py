"""Run files (HDF5): one per ``train``/``sample``/``bench`` run, published atomically.

Layout: root attributes (``physgen_run_format``, physgen, torch and Python versions, git commit,
command line, seed, device, start/end time), ``/config`` (a JSON string), ``/samples/<name>``
(float32, chunked, gzip, with process/sampler/steps/nfe/seed/wall_seconds attributes),
``/labels/<name>`` (each sample's class label, class-conditional models only),
``/metrics`` (scalars as attributes), ``/metrics/curves/<name>`` and ``/loss``.

HDF5 files are not crash-safe while open for writing, so :class:`RunWriter` builds the file
under a temporary name and renames it on close: a killed run leaves the previous file (or
none) under the final name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from physgen.errors import CheckpointError, ConfigError, PhysgenError
from physgen.io._common import decode_attr, first_line, git_commit, now, physgen_version
from physgen.io.atomic import PendingFile, exists_error
from physgen.io.outputs import write_error

__all__ = ["RUN_FORMAT", "RunFile", "RunWriter", "add_metrics", "read_run"]

#: Version of the run-file layout (root attribute ``physgen_run_format``).
RUN_FORMAT = 1


def _attr(value: Any) -> Any:
    """A value HDF5 can hold as an attribute: dicts (and None) become JSON strings."""
    if isinstance(value, str):  # str subclasses (torch.__version__) have no HDF5 type; a
        # path's undecodable bytes (surrogate escapes) are stored as visible \\udcXX text
        return str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if value is None or isinstance(value, Mapping):
        return json.dumps(value)
    if isinstance(value, (list, tuple)) and not all(isinstance(v, (int, float)) for v in value):
        return json.dumps(list(value))
    return value


def _iso(when: dt.datetime) -> str:
    """``when`` in UTC, ISO 8601 to the second (as ``end_time``); naive times are local."""
    return when.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def _check_name(name: str, what: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"invalid {what} name {name!r}")


class RunWriter:
    """Builds one run file at a temporary name and publishes it atomically on :meth:`close`.

    Use as a context manager: an exception inside the ``with`` block discards the file, so an
    interrupted run leaves nothing under the final name. An existing ``path`` is refused
    (:class:`ConfigError`) unless ``overwrite=True``. The file is usually written after the
    work, so pass the time the work began as ``started`` (default: now); ``end_time`` is
    stamped on :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        config: Mapping[str, Any] | None = None,
        seed: int | None = None,
        device: str | torch.device | None = None,
        command: str | None = None,
        overwrite: bool = False,
        started: dt.datetime | None = None,
    ):
        self.path = Path(path)
        self._started = now() if started is None else _iso(started)
        if self.path.exists() and not overwrite:
            raise exists_error(self.path)
        try:
            self._pending = PendingFile(self.path, overwrite=overwrite)
            self._file: h5py.File | None = h5py.File(self._pending.tmp, "w")
        except OSError as err:
            raise write_error(self.path, err) from None
        try:
            self._init_root(config or {}, seed, device, command)
        except BaseException:
            self.abort()
            raise

    def _init_root(
        self, config: Mapping[str, Any], seed: int | None, device: Any, command: str | None
    ) -> None:
        attrs = {
            "physgen_run_format": RUN_FORMAT,
            "physgen_version": physgen_version(),
            "torch_version": str(torch.__version__),
            "python_version": platform.python_version(),
            "git_commit": git_commit(),
            "command": command if command is not None else shlex.join(sys.argv),
            "seed": seed,
            "device": None if device is None else str(device),
            "start_time": self._started,
        }
        self.set_attrs(**attrs)
        try:
            text = json.dumps(dict(config))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"run config is not JSON-serialisable: {err}") from None
        self.file.create_dataset("config", data=text, dtype=h5py.string_dtype())

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            raise ConfigError(f"run file {self.path} is already closed")
        return self._file

    def set_attrs(self, **attrs: Any) -> None:
        """Set root attributes (None is stored as JSON ``null``)."""
        for name, value in attrs.items():
            self.file.attrs[name] = _attr(value)

    def add_samples(
        self,
        name: str,
        x: Tensor | np.ndarray,
        *,
        labels: Tensor | np.ndarray | None = None,
        **attrs: Any,
    ) -> None:
        """Store ``x`` as ``/samples/<name>`` (float32, chunked, gzip) with ``attrs``
        (process, sampler, steps, nfe, seed, wall_seconds...) and, for a class-conditional
        model, each sample's class label as ``/labels/<name>`` (int64 ``[n]``, −1 = none)."""
        _check_name(name, "sample set")
        if isinstance(x, Tensor):
            x = x.detach().cpu().numpy()
        data = np.asarray(x, dtype=np.float32)
        if isinstance(labels, Tensor):
            labels = labels.detach().cpu().numpy()
        if labels is not None and np.shape(labels) != data.shape[:1]:
            raise ConfigError(f"labels must have shape [{len(data)}], got {list(np.shape(labels))}")
        group = self.file.require_group("samples")
        if name in group:
            raise ConfigError(f"run file already holds samples {name!r}")
        ds = group.create_dataset(name, data=data, chunks=True, compression="gzip", shuffle=True)
        for key, value in attrs.items():
            ds.attrs[key] = _attr(value)
        if labels is not None:
            self.file.require_group("labels").create_dataset(
                name, data=np.asarray(labels, dtype=np.int64), compression="gzip"
            )

    def add_metric(self, name: str, value: Any) -> None:
        """Record a scalar metric as an attribute of ``/metrics``."""
        _check_name(name, "metric")
        self.file.require_group("metrics").attrs[name] = _attr(value)

    def add_curve(self, name: str, values: Tensor | np.ndarray) -> None:
        """Store a curve: ``"loss"`` goes to ``/loss``, anything else to
        ``/metrics/curves/<name>``."""
        _check_name(name, "curve")
        if isinstance(values, Tensor):
            values = values.detach().cpu().numpy()
        data = np.asarray(values)
        where = "loss" if name == "loss" else f"metrics/curves/{name}"
        if where in self.file:
            del self.file[where]
        chunks = True if data.size else None
        self.file.create_dataset(where, data=data, chunks=chunks, compression="gzip")

    def close(self) -> Path:
        """Stamp the end time, close and publish the file; returns its path."""
        if self._file is None:
            return self.path
        try:
            self.set_attrs(end_time=now())
            self._file.close()
            self._file = None
            return self._pending.commit()
        except PhysgenError:
            raise
        except (OSError, RuntimeError) as err:  # h5py's flush on a full disk, a failed rename
            self.abort()
            raise write_error(self.path, err) from None

    def abort(self) -> None:
        """Close and delete the temporary file; nothing appears under the final name."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        self._pending.discard()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        self.abort()
        if issubclass(exc_type, OSError) and not issubclass(exc_type, PhysgenError):
            raise write_error(self.path, exc) from None  # h5py on a full disk


def add_metrics(path: str | os.PathLike[str], metrics: Mapping[str, Any]) -> Path:
    """Add scalar ``metrics`` to the published run file ``path``: copied aside, extended and
    renamed back atomically, so that a failure leaves the file as it was."""
    import shutil

    from physgen.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            group = f.require_group("metrics")
            for name, value in metrics.items():
                _check_name(name, "metric")
                group.attrs[name] = _attr(value)
    return path


@dataclass(frozen=True)
class RunFile:
    """A run file as read back."""

    path: Path
    attrs: dict[str, Any]
    config: dict[str, Any]
    #: name -> (array ``[n, *event_shape]`` float32, attributes)
    samples: dict[str, tuple[np.ndarray, dict[str, Any]]]
    metrics: dict[str, Any]
    curves: dict[str, np.ndarray]
    loss: np.ndarray | None
    #: sample-set name -> class label of each sample (int64 ``[n]``), for conditional models
    labels: dict[str, np.ndarray] = field(default_factory=dict)


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    return {k: decode_attr(v) for k, v in obj.attrs.items()}


def _read_run(f: h5py.File, path: Path) -> RunFile:
    if "physgen_version" not in f.attrs:
        raise CheckpointError(f"{path}: an HDF5 file but not a physgen run file")
    config = json.loads(f["config"][()]) if "config" in f else {}
    samples = {k: (ds[()], _attrs(ds)) for k, ds in f.get("samples", {}).items()}
    metrics = _attrs(f["metrics"]) if "metrics" in f else {}
    curves = {k: ds[()] for k, ds in f.get("metrics/curves", {}).items()}
    loss = f["loss"][()] if "loss" in f else None
    labels = {k: ds[()] for k, ds in f.get("labels", {}).items()}
    return RunFile(path, _attrs(f), config, samples, metrics, curves, loss, labels)


def read_run(path: str | os.PathLike[str]) -> RunFile:
    """Read a run file written by :class:`RunWriter`; one-line :class:`CheckpointError` if it
    is missing, not HDF5, not a physgen run, or corrupt."""
    from physgen.core.validate import check_path

    path = Path(check_path("path", path))
    if not path.is_file():
        raise CheckpointError(f"run file not found: {path}")
    if not h5py.is_hdf5(path):
        raise CheckpointError(f"{path}: not an HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            return _read_run(f, path)
    except CheckpointError:
        raise
    except Exception as err:  # h5py raises OSError/KeyError/ValueError on damaged files
        raise CheckpointError(f"{path}: corrupt run file ({first_line(err)})") from None
