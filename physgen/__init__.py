"""physgen: physics-inspired generative processes behind one small core.

The library is the first-class way in; the ``physgen`` CLI is a thin layer over it::

    import physgen

    data = physgen.load_dataset("moons", n=10_000, seed=0)
    process = physgen.get_process("edm", sigma_data=1.0)
    net = physgen.get_network("mlp", data.event_shape)
    run = physgen.train(process, net, data, steps=2000)
    samples = physgen.sample(process, run.ema, data.event_shape, sampler="heun", steps=18)

Attributes are imported lazily so that ``import physgen`` (and ``physgen --help``) stays fast
and does not import torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "get_process": "physgen.api",
    "get_network": "physgen.api",
    "load_checkpoint": "physgen.api",
    "Checkpoint": "physgen.api",
    "load_dataset": "physgen.data",
    "Dataset": "physgen.data",
    "train": "physgen.training",
    "TrainResult": "physgen.training",
    "sample": "physgen.sampling",
    "SampleSet": "physgen.sampling",
    "solve": "physgen.sampling.solve",
    "steps_within": "physgen.sampling.solve",
    "log_likelihood": "physgen.sampling.likelihood",
    "read_run": "physgen.io",
    "Process": "physgen.core.process",
    "PhysgenError": "physgen.errors",
    "hookimpl": "physgen.registry.hookspecs",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:
    from physgen.api import Checkpoint, get_network, get_process, load_checkpoint
    from physgen.core.process import Process
    from physgen.data import Dataset, load_dataset
    from physgen.errors import PhysgenError
    from physgen.io import read_run
    from physgen.registry.hookspecs import hookimpl
    from physgen.sampling import SampleSet, sample
    from physgen.sampling.likelihood import log_likelihood
    from physgen.sampling.solve import solve, steps_within
    from physgen.training import TrainResult, train


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'physgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
