"""Training: the options (:mod:`physgen.training.config`), the process-agnostic loop
(:mod:`physgen.training.loop`), its seeding (:mod:`physgen.training.seeding`), the run's state
on disk (:mod:`physgen.training.state`), data-parallel training under ``torchrun``
(:mod:`physgen.training.distributed`), latent mode (:mod:`physgen.training.latent`), the
learning-rate schedule (:mod:`physgen.training.schedule`), TensorBoard scalars
(:mod:`physgen.training.scalars`) and EMA profiles with post-hoc EMA
(:mod:`physgen.training.posthoc`).

Names are imported lazily, so that reading :class:`TrainConfig` (the CLI does, to build its
options) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "TrainConfig": "physgen.training.config",
    "RESUME_KEYS": "physgen.training.state",
    "describe": "physgen.training.state",
    "TrainResult": "physgen.training.loop",
    "TrainingInterrupted": "physgen.training.loop",
    "train": "physgen.training.loop",
    "ema_for_length": "physgen.training.posthoc",
    "posthoc_ema": "physgen.training.posthoc",
    "lr_at": "physgen.training.schedule",
}
__all__ = ["RESUME_KEYS", "TrainConfig", "TrainResult", "TrainingInterrupted", "describe",
           "ema_for_length", "lr_at", "posthoc_ema", "train"]  # fmt: skip

if TYPE_CHECKING:
    from physgen.training.config import TrainConfig
    from physgen.training.loop import TrainingInterrupted, TrainResult, train
    from physgen.training.posthoc import ema_for_length, posthoc_ema
    from physgen.training.schedule import lr_at
    from physgen.training.state import RESUME_KEYS, describe


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'physgen.training' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
