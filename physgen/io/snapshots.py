"""EMA snapshots for post-hoc EMA (:mod:`physgen.training.posthoc`): one safetensors file per
snapshot step in a folder beside the checkpoint, written atomically; reading one never runs
code.

``runs/x/checkpoint.safetensors`` keeps its snapshots in ``runs/x/checkpoint-ema/``, one file
``step-000001000.safetensors`` per step, holding every tracked EMA profile as tensors
``<i>.<state key>`` (``i`` the profile's index in the run's ``ema_lengths``) and the JSON
metadata ``{"format", "step", "sigma_rels"}`` under ``__metadata__["physgen_ema_snapshot"]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
from torch import Tensor

from physgen.errors import CheckpointError
from physgen.io._common import first_line
from physgen.io.atomic import atomic_write

__all__ = [
    "SNAPSHOT_FORMAT",
    "Snapshot",
    "clear_snapshots",
    "list_snapshots",
    "load_snapshot",
    "save_snapshot",
    "snapshot_dir",
]

#: version of the snapshot layout; a reader refuses any other
SNAPSHOT_FORMAT = 1
_NAME = re.compile(r"step-(\d{9})\.safetensors")
_KEY = "physgen_ema_snapshot"


@dataclass(frozen=True)
class Snapshot:
    """One snapshot file: its step and the ``σ_rel`` of each profile it holds."""

    path: Path
    step: int
    sigma_rels: tuple[float, ...]


def snapshot_dir(checkpoint: str | os.PathLike[str]) -> Path:
    """The snapshot folder of ``checkpoint``: ``<stem>-ema`` beside it."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}-ema")


def save_snapshot(
    folder: str | os.PathLike[str], step: int, profiles: Sequence[Mapping[str, Tensor]],
    sigma_rels: Sequence[float],
) -> Path:  # fmt: skip
    """Write the state dicts ``profiles`` (one per ``σ_rel``) after ``step`` steps, atomically;
    an existing snapshot of that step (an interrupted run's, resumed) is replaced."""
    tensors = {
        f"{i}.{key}": t.detach().to("cpu").contiguous().clone()
        for i, state in enumerate(profiles)
        for key, t in state.items()
    }
    meta = {"format": SNAPSHOT_FORMAT, "step": int(step), "sigma_rels": list(sigma_rels)}
    path = Path(folder) / f"step-{int(step):09d}.safetensors"
    text = {_KEY: json.dumps(meta)}
    return atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), text))


def _read_meta(path: Path) -> dict:
    try:
        with safetensors.safe_open(str(path), "pt") as f:  # header only; never unpickles
            meta = json.loads((f.metadata() or {})[_KEY])
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not an EMA snapshot ({first_line(err)})") from None
    if not isinstance(meta, dict) or meta.get("format") != SNAPSHOT_FORMAT:
        raise CheckpointError(f"{path}: EMA snapshot format {meta.get('format')!r} unsupported")
    return meta


def list_snapshots(folder: str | os.PathLike[str]) -> list[Snapshot]:
    """The snapshots in ``folder`` by step (none if it does not exist); each file's header is
    read and checked, its tensors are not."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.iterdir()):
        m = _NAME.fullmatch(path.name)
        if m is None:
            continue
        meta = _read_meta(path)
        if meta.get("step") != int(m.group(1)):
            raise CheckpointError(f"{path}: snapshot step {meta.get('step')!r} != file name")
        rels = tuple(float(s) for s in meta.get("sigma_rels", []))
        out.append(Snapshot(path=path, step=int(m.group(1)), sigma_rels=rels))
    return out


def load_snapshot(snapshot: Snapshot) -> list[dict[str, Tensor]]:
    """The state dict of each profile in ``snapshot`` (CPU tensors)."""
    try:
        tensors = safetensors.torch.load_file(str(snapshot.path), device="cpu")
    except Exception as err:
        raise CheckpointError(f"{snapshot.path}: unreadable snapshot ({first_line(err)})") from None
    out: list[dict[str, Tensor]] = [{} for _ in snapshot.sigma_rels]
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) >= len(out):
            raise CheckpointError(f"{snapshot.path}: odd snapshot tensor {key!r}")
        out[int(index)][name] = value
    return out


def clear_snapshots(folder: str | os.PathLike[str]) -> None:
    """Delete the snapshot files in ``folder`` (an overwritten run's); other files stay."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _NAME.fullmatch(path.name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
