"""What every benchmark's HDF5 file records at its root: the command, the options and the
versions it ran with (one place, so the scripts cannot drift apart)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

import h5py
import numpy as np
import torch

from physgen.io import physgen_version


def write_header(f: h5py.File, args: argparse.Namespace, **versions: str) -> None:
    """Root attributes ``command``, ``options`` (JSON of ``args``) and ``versions`` (JSON:
    physgen, torch, numpy, h5py, Python, platform, plus ``versions``, e.g. peer libraries)."""
    f.attrs["command"] = " ".join(sys.argv)
    f.attrs["options"] = json.dumps({k: str(v) for k, v in vars(args).items()})
    info: dict[str, Any] = {
        "physgen": physgen_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }
    f.attrs["versions"] = json.dumps(info)
