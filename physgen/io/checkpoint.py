"""Checkpoints: one safetensors file (loading never runs code) with JSON metadata.

Tensors are grouped by prefix::

    net.<key>      model state_dict            ema.<key>     EMA weights
    process.<key>  process state_dict          optim.<key>   optimizer tensors (stable keys)
    rng.<name>     generator states (uint8)    extra.<name>  anything else (e.g. the loss curve)
    profiles.<i>.<key>  EMA profile i (power-function EMAs, physgen.training.posthoc)

and the safetensors header's ``__metadata__`` holds ``{"physgen": json.dumps(meta)}`` with
``format``, versions, time, step, the optimizer's non-tensor state and what the caller adds
(process, network, dataset, train options).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from physgen.errors import CheckpointError, ConfigError
from physgen.io._common import first_line, now, physgen_version
from physgen.io.atomic import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "RawCheckpoint",
    "load_checkpoint_file",
    "read_checkpoint_meta",
    "restore_module",
    "restore_optimizer",
    "save_checkpoint",
]

#: Version of the checkpoint layout; a reader refuses any other.
CHECKPOINT_FORMAT = 1
_GROUPS = ("net", "ema", "process", "optim", "rng", "extra", "profiles")
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class RawCheckpoint:
    """A checkpoint as stored: tensors grouped by prefix (on the CPU) and the metadata."""

    path: Path
    meta: dict[str, Any]
    net: dict[str, Tensor] = field(default_factory=dict)
    ema: dict[str, Tensor] = field(default_factory=dict)
    process: dict[str, Tensor] = field(default_factory=dict)
    optim: dict[str, Tensor] = field(default_factory=dict)
    rng: dict[str, Tensor] = field(default_factory=dict)
    extra: dict[str, Tensor] = field(default_factory=dict)
    #: the EMA profiles' tensors as ``<i>.<key>`` (see :meth:`profile_states`)
    profiles: dict[str, Tensor] = field(default_factory=dict)

    @property
    def step(self) -> int:
        """Training steps completed when the checkpoint was written."""
        return int(self.meta.get("step", 0))

    def profile_states(self) -> list[dict[str, Tensor]]:
        """The state dict of each stored EMA profile, in the order of the run's
        ``ema_lengths``."""
        out: dict[int, dict[str, Tensor]] = {}
        for key, value in self.profiles.items():
            index, _, name = key.partition(".")
            if not index.isdigit() or not name:
                raise CheckpointError(f"{self.path}: odd EMA profile tensor {key!r}")
            out.setdefault(int(index), {})[name] = value
        if sorted(out) != list(range(len(out))):
            raise CheckpointError(f"{self.path}: EMA profiles {sorted(out)} are not 0..n-1")
        return [out[i] for i in range(len(out))]


StateLike = nn.Module | Mapping[str, Tensor] | None


def _state(obj: StateLike) -> Mapping[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    return obj


def _put(out: dict[str, Tensor], prefix: str, tensors: Mapping[str, Any]) -> None:
    for key, value in tensors.items():
        if not isinstance(value, Tensor):
            raise ConfigError(f"checkpoint entry {prefix}.{key} is a {type(value).__name__}")
        out[f"{prefix}.{key}"] = value


def _storable(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors that share no storage (safetensors refuses shared memory)."""
    out, seen = {}, set()
    for key, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        whole = storage.nbytes() == t.numel() * t.element_size()
        if storage.data_ptr() in seen or not whole:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` as tensors ``state.<param>.<name>``/``group.<i>.<name>`` and
    a JSON part (param_groups and non-tensor per-parameter values)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, per_param in state["state"].items():
        for name, value in per_param.items():
            key = f"state.{pid}.{name}"
            if isinstance(value, Tensor):
                tensors[key] = value
            else:
                scalars[key] = value
    groups = []
    for i, group in enumerate(state["param_groups"]):
        plain = {}
        for name, value in group.items():
            if isinstance(value, Tensor):
                tensors[f"group.{i}.{name}"] = value
            else:
                plain[name] = value
        groups.append(plain)
    return tensors, {"param_groups": groups, "state_scalars": scalars}


def _write_safetensors(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path) -> None:
    try:
        safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    except safetensors.SafetensorError as err:  # its I/O failures are not OSErrors
        text = str(err).replace(str(path), "").replace(path.name, "")
        reason = text.split('message: "')[-1].split('"')[0] if 'message: "' in text else text
        raise OSError(reason.strip() or "write failed") from None


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    net: StateLike,
    ema: StateLike,
    process: StateLike,
    optimizer: torch.optim.Optimizer | None,
    meta: Mapping[str, Any],
    rng_state: Mapping[str, Tensor] | None = None,
    extra: Mapping[str, Tensor] | None = None,
    profiles: Sequence[StateLike] = (),
) -> Path:
    """Write one safetensors checkpoint atomically and return its path.

    ``net``/``ema``/``process`` are modules or state dicts; ``meta`` is JSON-serialisable
    (caller keys: ``process``, ``network``, ``dataset``, ``train``, ``step``...). This function
    adds ``format``, ``physgen_version``, ``torch_version``, ``time`` and ``optimizer`` (the
    non-tensor optimizer state). ``rng_state`` maps names to generator states (uint8);
    ``profiles`` are EMA profiles (modules or state dicts), stored as ``profiles.<i>.<key>``.
    """
    tensors: dict[str, Tensor] = {}
    _put(tensors, "net", _state(net))
    _put(tensors, "ema", _state(ema))
    _put(tensors, "process", _state(process))
    optim_meta = None
    if optimizer is not None:
        optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
        _put(tensors, "optim", optim_tensors)
    _put(tensors, "rng", rng_state or {})
    _put(tensors, "extra", extra or {})
    for i, profile in enumerate(profiles):
        _put(tensors, f"profiles.{i}", _state(profile))
    header = {
        **meta,
        "format": CHECKPOINT_FORMAT,
        "physgen_version": physgen_version(),
        "torch_version": str(torch.__version__),
        "time": now(),
        "optimizer": optim_meta,
    }
    try:
        text = json.dumps(header)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"checkpoint metadata is not JSON-serialisable: {err}") from None
    stored = _storable(tensors)
    return atomic_write(path, lambda tmp: _write_safetensors(stored, {"physgen": text}, tmp))


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors JSON header, checked for pickles and truncation before anything else."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            # A safetensors header length can begin with b"PK" or b"\x80" too; its JSON
            # always opens with "{", which neither a zip nor a pickle has at byte 8.
            safetensors_like = f.read(1) == b"{"
            if head[:2] == b"PK" and not safetensors_like:
                raise CheckpointError(
                    f"{path}: a zip archive (torch.save output?), not a safetensors "
                    "checkpoint; refused without unpickling"
                )
            if head[:1] == b"\x80" and not safetensors_like:
                raise CheckpointError(
                    f"{path}: a pickle, not a safetensors checkpoint; refused without unpickling"
                )
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated checkpoint ({size} bytes)")
            n = int.from_bytes(head, "little")
            if n > _MAX_HEADER:
                raise CheckpointError(f"{path}: not a safetensors checkpoint")
            if 8 + n > size:
                raise CheckpointError(f"{path}: truncated checkpoint (header cut off)")
            f.seek(8)
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: not a safetensors checkpoint (bad header)") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({first_line(err)})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise CheckpointError(f"{path}: not a safetensors checkpoint (bad header)")
    ends = [_data_end(path, k, v) for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) > size:
        raise CheckpointError(f"{path}: truncated checkpoint (tensor data cut off)")
    return header


def _data_end(path: Path, key: str, entry: Any) -> int:
    """Where tensor ``key``'s bytes end, from a header entry checked to be well formed."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int and o >= 0 for o in offsets)
    ):
        raise CheckpointError(f"{path}: not a safetensors checkpoint (bad entry {key!r})")
    return int(offsets[1])


def _physgen_meta(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    text = (header.get("__metadata__") or {}).get("physgen")
    if text is None:
        raise CheckpointError(f"{path}: a safetensors file without physgen metadata")
    try:
        meta = json.loads(text)
    except (TypeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: corrupt physgen metadata") from None
    version = meta.get("format") if isinstance(meta, dict) else None
    if version != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {version!r} is not supported "
            f"(this physgen reads format {CHECKPOINT_FORMAT})"
        )
    _check_meta(path, meta)
    return meta


def _is_count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _is_shape(v: Any) -> bool:
    return isinstance(v, list) and all(type(d) is int and d > 0 for d in v)


#: the type of every metadata field physgen reads: (key path, test, what it must be). A
#: hand-edited or foreign checkpoint fails here with one line, not deep inside a loader.
_META_SCHEMA: list[tuple[tuple[str, ...], Any, str]] = [
    (("step",), _is_count, "an integer ≥ 0"),
    (("process",), lambda v: isinstance(v, dict), "a table"),
    (("process", "name"), lambda v: isinstance(v, str), "a string"),
    (("process", "options"), lambda v: isinstance(v, dict), "a table"),
    (("network",), lambda v: isinstance(v, dict), "a table"),
    (("network", "name"), lambda v: isinstance(v, str), "a string"),
    (("network", "config"), lambda v: isinstance(v, dict), "a table"),
    (("network", "num_classes"), _is_count, "an integer ≥ 0"),
    (("dataset",), lambda v: isinstance(v, dict), "a table"),
    (("dataset", "event_shape"), _is_shape, "a list of positive integers"),
    (("train",), lambda v: isinstance(v, dict), "a table"),
    (("optimizer",), lambda v: v is None or isinstance(v, dict), "a table or null"),
    (
        ("optimizer", "param_groups"),
        lambda v: isinstance(v, list) and all(isinstance(g, dict) for g in v),
        "a list of tables",
    ),
    (("optimizer", "state_scalars"), lambda v: isinstance(v, dict), "a table"),
]
_MISSING = object()


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    """Every field of :data:`_META_SCHEMA` that is present has its type (a parent that is not
    a table was refused first); an optimizer table has its param_groups."""
    for keys, ok, what in _META_SCHEMA:
        value: Any = meta
        for key in keys:
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if value is not _MISSING and not ok(value):
            shown = json.dumps(value)[:40]
            raise CheckpointError(f"{path}: metadata {'.'.join(keys)} must be {what}, got {shown}")
    optimizer = meta.get("optimizer")
    if isinstance(optimizer, dict) and "param_groups" not in optimizer:
        raise CheckpointError(f"{path}: metadata optimizer.param_groups is missing")


def read_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (step, process, network, dataset, ...) from its
    header alone: no tensor is read. Checked like :func:`load_checkpoint_file`."""
    path = Path(path)
    return _physgen_meta(path, _read_header(path))


def load_checkpoint_file(path: str | os.PathLike[str]) -> RawCheckpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Never unpickles: zip/pickle payloads are refused from their first bytes, and the
    safetensors header is checked for truncation before any tensor is read.
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: unreadable checkpoint ({first_line(err)})") from None
    groups: dict[str, dict[str, Tensor]] = {g: {} for g in _GROUPS}
    for key, value in tensors.items():
        prefix, _, name = key.partition(".")
        if prefix in groups:
            groups[prefix][name] = value
    return RawCheckpoint(path=path, meta=meta, **groups)


def restore_module(module: nn.Module, raw: RawCheckpoint, group: str = "net") -> None:
    """Load the ``group`` tensors of ``raw`` into ``module`` (strict keys and shapes)."""
    if group not in _GROUPS:
        raise ConfigError(f"unknown checkpoint group {group!r} (groups: {', '.join(_GROUPS)})")
    try:
        module.load_state_dict(getattr(raw, group))
    except RuntimeError as err:
        raise CheckpointError(
            f"{raw.path}: {group} weights do not fit {type(module).__name__} ({first_line(err)})"
        ) from None


def _key(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def restore_optimizer(optimizer: torch.optim.Optimizer, raw: RawCheckpoint) -> None:
    """Load the optimizer state saved in ``raw`` into ``optimizer``."""
    info = raw.meta.get("optimizer")
    if not isinstance(info, dict):
        raise CheckpointError(f"{raw.path}: checkpoint holds no optimizer state")
    state: dict[int | str, dict[str, Any]] = {}
    groups = [dict(g) for g in info["param_groups"]]
    entries = list(raw.optim.items()) + list(info.get("state_scalars", {}).items())
    for key, value in entries:
        kind, index, name = ([*key.split(".", 2), "", ""])[:3]
        if kind not in ("state", "group") or not index.isdigit() or not name:
            raise CheckpointError(f"{raw.path}: odd optimizer state key {key!r}")
        if kind == "state":
            state.setdefault(_key(index), {})[name] = value
        elif int(index) < len(groups):
            groups[int(index)][name] = value
    for group, current in zip(groups, optimizer.param_groups, strict=False):
        for name, value in group.items():  # JSON turned tuples (Adam's betas) into lists
            if isinstance(current.get(name), tuple) and isinstance(value, list):
                group[name] = tuple(value)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as err:
        raise CheckpointError(
            f"{raw.path}: optimizer state does not fit ({first_line(err)})"
        ) from None
