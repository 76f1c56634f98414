"""Shared test fixtures: fake installed plugins (real dist-info entry points on sys.path)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest


def make_plugin_dist(root: Path, dist: str, entry: str, module: str, source: str) -> Path:
    """Create an installed distribution ``dist`` under ``root``: a module file and a
    ``.dist-info`` whose ``entry_points.txt`` registers ``entry = module`` in group
    ``physgen`` — exactly what ``pip install`` of a plugin package leaves behind."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"  # PEP 427 escaping
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[physgen]\n{entry} = {module}\n")
    return root


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """Put a directory of fake installed plugins on sys.path (and PYTHONPATH for CLI runs)."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    yield root
    for name in list(sys.modules):
        if name.startswith("fake_physgen_"):
            del sys.modules[name]


def pytest_configure(config):
    # One torch thread per test worker: CI runs two xdist workers on two cores, and
    # oversubscribed elementwise kernels were measured ~100x slower under load.
    import torch

    torch.set_num_threads(1)
