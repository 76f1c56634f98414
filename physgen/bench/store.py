"""The bench run file: one HDF5 file, extended one completed piece at a time, atomically.

Layout (``h5py`` names; attributes holding dicts or lists of strings are JSON strings)::

    /                         root attributes (as every physgen run file, :mod:`physgen.io.runs`):
                              physgen_run_format, kind = "bench", physgen_version,
                              torch_version, python_version, git_commit ("unknown" outside a
                              git checkout), command, seed (the suite's first), device,
                              start_time, end_time (of the last write)
    /config                   JSON string: the resolved suite (Suite.to_dict())
    /reference/<data>.s<seed> float32 [n_samples, *event]: fresh held-out examples the metrics
                              compare against; attrs dataset, seed, and floor.<metric>: the
                              metric between a second fresh draw and these (the noise floor)
    /training/<run>           one group per trained model, <run> = <data>.<label>.s<seed>;
                              attrs dataset, process (label), process_name, options, teacher,
                              seed, network, network_config, steps, batch_size, lr, ema,
                              grad_clip, wall_seconds (training), resumed_from_step,
                              final_loss, checkpoint (path relative to the run file)
        loss                  float32 [steps]: mean loss of every step
    /samples/<run>.<sampler>.nfe<budget>
                              float32 [n_samples, *event]: one cell; attrs dataset, process,
                              process_name, seed, run, sampler, nfe_budget, steps, nfe (as
                              measured by the sampling driver), wall_seconds (sampling), options
                              (sampler options), metric.<name> for each suite metric

``physgen.read_run`` reads the root attributes, ``/config`` and ``/samples`` of this file
like any run file. Crash safety: HDF5 is not safe to kill while open for writing, so every
write copies the current file to a temporary name beside it, appends there, fsyncs and renames
it onto the final name (:func:`physgen.io.atomic_path`). A SIGKILL at any moment leaves the
previous complete file; a stale ``.<name>.<pid>-<hex>.tmp`` may remain and is removed by the
next run. Presence is completion: a group or dataset exists only once fully written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from physgen.errors import CheckpointError, ConfigError
from physgen.io import RunWriter, atomic_path, git_commit
from physgen.io._common import decode_attr, first_line, now
from physgen.io.atomic import remove_stale as remove_stale  # the runner's, before a first write

__all__ = ["BenchFile", "Cell", "TrainingRun", "append", "create", "read_bench"]


def _json(value: Any) -> Any:
    if value is None or isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return value


def create(
    path: Path, config: dict[str, Any], *, seed: int, device: str, command: str, overwrite: bool
) -> None:
    """Write a new run file holding only the root attributes and ``/config``."""
    with RunWriter(
        path, config=config, seed=seed, device=device, command=command, overwrite=overwrite
    ) as run:
        run.set_attrs(kind="bench", git_commit=git_commit() or "unknown")


def append(path: Path, write: Callable[[h5py.File], None]) -> None:
    """Copy ``path`` aside, let ``write`` add to the copy, publish it atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            write(f)
            f.attrs["end_time"] = now()


def put(group: h5py.Group, name: str, data: np.ndarray, attrs: dict[str, Any]) -> None:
    """A gzip dataset ``group/name`` with ``attrs``."""
    chunks = True if data.size else None
    set_attrs(group.create_dataset(name, data=data, chunks=chunks, compression="gzip"), attrs)


def set_attrs(obj: h5py.HLObject, attrs: dict[str, Any]) -> None:
    """Attributes; dicts, lists and None are stored as JSON strings."""
    for key, value in attrs.items():
        obj.attrs[key] = _json(value)


@dataclass(frozen=True)
class TrainingRun:
    """``/training/<run>`` as read back."""

    name: str
    attrs: dict[str, Any]
    loss: np.ndarray


@dataclass(frozen=True)
class Cell:
    """``/samples/<cell>`` as read back: samples, attributes and metric values."""

    name: str
    samples: np.ndarray
    attrs: dict[str, Any]
    metrics: dict[str, float]


@dataclass(frozen=True)
class BenchFile:
    """A bench run file as read back (see the module docstring for the layout)."""

    path: Path
    attrs: dict[str, Any]
    config: dict[str, Any]
    references: dict[str, tuple[np.ndarray, dict[str, Any]]]
    training: dict[str, TrainingRun]
    cells: dict[str, Cell]


def _attrs(obj: Any) -> dict[str, Any]:
    return {k: decode_attr(v) for k, v in obj.attrs.items()}


def _read(f: h5py.File, path: Path, with_samples: bool) -> BenchFile:
    if f.attrs.get("kind") != "bench":
        raise CheckpointError(f"{path}: not a physgen bench file")
    refs = {k: (ds[()], _attrs(ds)) for k, ds in f.get("reference", {}).items()}
    training = {
        k: TrainingRun(k, _attrs(g), g["loss"][()]) for k, g in f.get("training", {}).items()
    }
    cells = {}
    for k, ds in f.get("samples", {}).items():
        attrs = _attrs(ds)
        metrics = {m[7:]: float(v) for m, v in attrs.items() if m.startswith("metric.")}
        samples = ds[()] if with_samples else np.zeros((0,), np.float32)
        cells[k] = Cell(k, samples, attrs, metrics)
    config = json.loads(f["config"][()])
    return BenchFile(path, _attrs(f), config, refs, training, cells)


def read_bench(path: str | Path, *, samples: bool = True) -> BenchFile:
    """Read a bench run file; one-line :class:`CheckpointError` if missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"bench file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            return _read(f, path, samples)
    except CheckpointError:
        raise
    except Exception as err:  # h5py raises OSError/KeyError/ValueError on damaged files
        raise CheckpointError(f"{path}: corrupt bench file ({first_line(err)})") from None


def check_same_suite(path: Path, config: dict[str, Any]) -> None:
    """Resuming needs the suite that made the file; name the first difference otherwise."""
    old, new = read_bench(path, samples=False).config, config
    if old == new:
        return
    key = next((k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)), "?")
    raise ConfigError(
        f"{path} holds another suite ({key}: {_short(old.get(key))} there, {_short(new.get(key))} "
        "now); pass --overwrite to start over, or another --out"
    )


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
