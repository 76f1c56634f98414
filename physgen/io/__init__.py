"""Files physgen writes: checkpoints (safetensors + JSON metadata) and run files (HDF5).

Every file is written atomically (:mod:`physgen.io.atomic`): built at a temporary name beside
the target, fsynced, then renamed onto the final name. Checkpoints
(:mod:`physgen.io.checkpoint`) are one safetensors file whose loading never runs code; run
files (:mod:`physgen.io.runs`) are HDF5 with the run's provenance, samples and metrics.
"""

from __future__ import annotations

from physgen.io._common import git_commit, physgen_version
from physgen.io.atomic import atomic_path, atomic_write
from physgen.io.checkpoint import (
    CHECKPOINT_FORMAT,
    RawCheckpoint,
    load_checkpoint_file,
    read_checkpoint_meta,
    restore_module,
    restore_optimizer,
    save_checkpoint,
)
from physgen.io.runs import RUN_FORMAT, RunFile, RunWriter, add_metrics, read_run

__all__ = [
    "CHECKPOINT_FORMAT",
    "RUN_FORMAT",
    "RawCheckpoint",
    "RunFile",
    "RunWriter",
    "add_metrics",
    "atomic_path",
    "atomic_write",
    "git_commit",
    "load_checkpoint_file",
    "physgen_version",
    "read_checkpoint_meta",
    "read_run",
    "restore_module",
    "restore_optimizer",
    "save_checkpoint",
]
