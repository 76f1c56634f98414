"""What a training run is, on disk: the checkpoint metadata naming it (:func:`describe`), the
training state written at a clean step boundary (:func:`save_state`) and read back for an exact
resume (:func:`restore_state`), which first checks that the run being resumed is the same run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from physgen.errors import CheckpointError, ConfigError, DataError
from physgen.io import load_checkpoint_file, restore_module, restore_optimizer, save_checkpoint
from physgen.training.config import TrainConfig
from physgen.training.distributed import all_gather_objects
from physgen.training.seeding import rng_key

__all__ = [
    "CURVES",
    "RESUME_KEYS",
    "data_tensors",
    "describe",
    "full_meta",
    "restore_state",
    "save_state",
]

#: Training options that must match between a checkpoint and the run resuming it (the others
#: are budget-like: steps, checkpoint_every, log_every).
RESUME_KEYS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume"] == "match"
)
#: Metadata tables that define the run: a resumed run must describe itself the same way.
_RUN_TABLES = ("process", "network", "dataset", "latent")


def _options(process: Any) -> dict[str, Any]:
    options_dict = getattr(process, "options_dict", None)
    return options_dict() if callable(options_dict) else {}


def describe(process: Any, net: nn.Module, data: Any) -> dict[str, Any]:
    """Checkpoint metadata naming what was trained: ``{"process": {name, options}, "network":
    {name, config, num_classes}, "dataset": {name, size, event_shape, num_classes, info}}``.

    Names come from the ``registry_name`` attribute that :func:`physgen.api.get_process` sets
    (and ``registry_name``/``registry_config`` on a network, where its factory sets them),
    else from the class name; the network config is then empty.
    """
    x = getattr(data, "x", None)  # None: a streamed dataset (physgen.data.loader.Streamed)
    size = int(x.shape[0]) if x is not None else data.size
    event_shape = x.shape[1:] if x is not None else data.event_shape
    return {
        "process": {
            "name": getattr(process, "registry_name", None) or type(process).__name__,
            "options": _options(process),
        },
        "network": {
            "name": getattr(net, "registry_name", None) or type(net).__name__,
            "config": dict(getattr(net, "registry_config", None) or {}),
            "num_classes": int(getattr(net, "num_classes", 0) or 0),
        },
        "dataset": {
            "name": getattr(data, "name", None),
            "size": size,
            "event_shape": [int(d) for d in event_shape],
            "num_classes": int(getattr(data, "num_classes", 0) or 0),
            "info": dict(getattr(data, "info", None) or {}),
        },
    }


def full_meta(meta: dict[str, Any] | None, process: Any, net: nn.Module, data: Any) -> dict:
    """The caller's ``meta`` over :func:`describe` (merged one level deep), as JSON values."""
    out: dict[str, Any] = describe(process, net, data)
    for key, value in (meta or {}).items():
        base = out.get(key)
        out[key] = (
            {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
        )
    plain: dict[str, Any] = json.loads(json.dumps(out, default=str))
    return plain


def data_tensors(data: Any, device: torch.device, net: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The data (float, on ``device``) and the class labels when the net is conditional."""
    x = torch.as_tensor(data.x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"training data must be [n ≥ 1, *event_shape], got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    labels = getattr(data, "labels", None)
    if labels is None or getattr(net, "num_classes", 0) <= 0:
        return x.to(device), None
    labels = torch.as_tensor(labels).to(device=device, dtype=torch.long)
    if labels.shape != (x.shape[0],):
        raise DataError(f"{x.shape[0]} examples but labels of shape {tuple(labels.shape)}")
    return x.to(device), labels


def _first_difference(saved: Any, given: Any, where: str) -> tuple[str, Any, Any] | None:
    """The first (path, saved, given) where two JSON values differ; keys the checkpoint does
    not record (written by an older physgen) are not compared."""
    if isinstance(saved, dict) and isinstance(given, dict):
        for key in saved:  # the checkpoint's order: names before nested tables
            if key not in given:
                return f"{where}.{key}", saved[key], None
            diff = _first_difference(saved[key], given[key], f"{where}.{key}")
            if diff is not None:
                return diff
        return None
    return None if saved == given else (where, saved, given)


def check_same_run(path: Path, saved: dict[str, Any], meta: dict[str, Any]) -> None:
    """Refuse to resume ``path`` as another run: everything that defines the run (process and
    its options, network and its options, dataset, size and options, latent autoencoder, the
    :data:`RESUME_KEYS` options) must be what the checkpoint recorded."""
    train_saved, train_given = saved.get("train", {}), meta["train"]
    pairs = [(t, saved.get(t), meta.get(t)) for t in _RUN_TABLES if t in saved or t in meta]
    pairs += [(k, train_saved[k], train_given[k]) for k in RESUME_KEYS if k in train_saved]
    for name, old, new in pairs:
        diff = _first_difference(old, new, name)
        if diff is not None:
            key, old_value, new_value = diff
            raise ConfigError(
                f"cannot resume {path}: it was trained with {key}={old_value!r}, this run has "
                f"{new_value!r} (resume continues the same run; only budget options such as "
                "steps may change)"
            )


@dataclasses.dataclass
class TrainState:
    """Everything a step changes: the modules, the optimizer and the generators of this rank.

    ``loss_gens[j]`` is the noise generator of shard ``shard_ids[j]``.
    """

    net: nn.Module
    ema: nn.Module
    process: Any
    optimizer: torch.optim.Optimizer
    data_gen: torch.Generator
    shard_ids: list[int]
    loss_gens: list[torch.Generator]
    #: the power-function EMA profiles, one per ``ema_lengths`` entry
    profiles: list[nn.Module] = dataclasses.field(default_factory=list)


#: the per-step curves a checkpoint keeps (``extra.<name>``, float32 ``[step]``): the mean
#: loss, the gradient norm before clipping and the learning rate of every step
CURVES = ("losses", "grad_norm", "lr")


def save_state(
    path: Path, state: TrainState, step: int, curves: dict[str, np.ndarray],
    meta: dict[str, Any], extra: dict[str, Tensor], is_main: bool,
) -> Path:  # fmt: skip
    """Write the checkpoint of ``state`` after ``step`` steps (atomically, on rank 0; every
    rank must call this: it gathers the shards' generator states). ``curves``: the
    :data:`CURVES` of every step so far."""
    rng = {"data": state.data_gen.get_state()}
    pairs = zip(state.shard_ids, state.loss_gens, strict=True)
    for states in all_gather_objects({rng_key(s): g.get_state() for s, g in pairs}):
        rng.update(states)
    if not is_main:
        return path
    stored = {k: torch.from_numpy(np.ascontiguousarray(curves[k], np.float32)) for k in CURVES}
    return save_checkpoint(
        path, net=state.net, ema=state.ema, optimizer=state.optimizer,
        process=state.process if isinstance(state.process, nn.Module) else None,
        meta={**meta, "step": step}, rng_state=rng, extra={**extra, **stored},
        profiles=state.profiles,
    )  # fmt: skip


def restore_state(
    path: Path, state: TrainState, meta: dict[str, Any]
) -> tuple[int, dict[str, np.ndarray]]:
    """Load ``path`` into ``state`` after checking it is this run; returns the step and the
    :data:`CURVES` so far (a checkpoint of an older physgen has only the losses: the other
    curves are NaN up to its step)."""
    raw = load_checkpoint_file(path)
    check_same_run(path, raw.meta, meta)
    restore_module(state.net, raw, "net")
    restore_module(state.ema, raw, "ema")
    stored = raw.profile_states() if state.profiles else []
    if len(stored) != len(state.profiles):
        raise CheckpointError(f"{path}: holds {len(stored)} EMA profiles, the run tracks "
                              f"{len(state.profiles)}")  # fmt: skip
    for profile, profile_state in zip(state.profiles, stored, strict=True):
        try:
            profile.load_state_dict(profile_state)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: EMA profile does not fit ({err})") from None
    if isinstance(state.process, nn.Module):
        restore_module(state.process, raw, "process")
    restore_optimizer(state.optimizer, raw)
    try:
        state.data_gen.set_state(raw.rng["data"])
        for shard, gen in zip(state.shard_ids, state.loss_gens, strict=True):
            gen.set_state(raw.rng[rng_key(shard)])
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: unusable generator state ({err})") from None
    curves = {}
    for name in CURVES:
        missing = torch.full((raw.step,), float("nan")) if name != "losses" else torch.zeros(0)
        curves[name] = raw.extra.get(name, missing).numpy()
        if curves[name].shape != (raw.step,):
            raise CheckpointError(f"{path}: {name} curve does not match step {raw.step}")
    return raw.step, curves
