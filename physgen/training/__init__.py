"""Training: the process-agnostic loop (:mod:`physgen.training.loop`), its seeding, data-parallel
training under ``torchrun`` (:mod:`physgen.training.distributed`) and latent mode
(:mod:`physgen.training.latent`)."""

from physgen.training.loop import RESUME_KEYS, TrainResult, describe, train

__all__ = ["RESUME_KEYS", "TrainResult", "describe", "train"]
