"""Plugin discovery: built-ins via entry points, broken plugins isolated, conflicts named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from physgen.errors import ConfigError, PluginError
from physgen.registry import Registry
from tests.conftest import make_plugin_dist

GOOD = """
from physgen import hookimpl
from physgen.registry import DatasetEntry

@hookimpl
def physgen_datasets():
    return [DatasetEntry("fake_points", lambda n, seed=0: None, "a fake dataset")]
"""


def test_builtins_come_from_entry_points():
    reg = Registry()
    assert "edm" in reg.names("processes")
    assert reg.plugin_of("processes", "edm").name == "diffusion"
    assert reg.plugin_of("processes", "edm").package == "physgen"
    assert {"mlp"} <= set(reg.names("networks"))
    assert not [p for p in reg.plugins if p.package == "physgen" and not p.ok]


def test_import_error_is_reported_by_name_and_rest_works(plugin_path):
    make_plugin_dist(
        plugin_path,
        "fake-broken",
        "brokenplug",
        "fake_physgen_broken",
        "raise ImportError('needs a library that is not installed')\n",
    )
    make_plugin_dist(plugin_path, "fake-good", "goodplug", "fake_physgen_good", GOOD)
    reg = Registry()
    broken = {p.name: p for p in reg.broken()}
    assert "brokenplug" in broken
    assert broken["brokenplug"].package == "fake-broken"
    assert "not installed" in broken["brokenplug"].reason
    assert "fake_points" in reg.names("datasets")
    assert "edm" in reg.names("processes")


def test_raising_hook_and_garbage_are_isolated(plugin_path):
    make_plugin_dist(
        plugin_path,
        "fake-raise",
        "raiseplug",
        "fake_physgen_raise",
        """
        from physgen import hookimpl
        from physgen.registry import DatasetEntry

        @hookimpl
        def physgen_processes():
            raise RuntimeError("boom")

        @hookimpl
        def physgen_samplers():
            return ["not a sampler"]

        @hookimpl
        def physgen_datasets():
            return [DatasetEntry("still_here", lambda n, seed=0: None, "ok")]
        """,
    )
    reg = Registry()
    info = next(p for p in reg.plugins if p.name == "raiseplug")
    assert not info.ok
    assert "physgen_processes: RuntimeError: boom" in info.reason
    assert "physgen_samplers: TypeError" in info.reason
    assert "still_here" in reg.names("datasets")  # its healthy hook still counts
    assert "edm" in reg.names("processes")


def test_duplicate_names_are_an_error_naming_both(plugin_path):
    make_plugin_dist(plugin_path, "fake-a", "plug_a", "fake_physgen_a", GOOD)
    make_plugin_dist(plugin_path, "fake-b", "plug_b", "fake_physgen_b", GOOD)
    reg = Registry()
    with pytest.raises(PluginError, match=r"plug_a \(fake-a\) and plug_b \(fake-b\)"):
        reg.dataset("fake_points")


def test_disable_by_environment(plugin_path, monkeypatch):
    make_plugin_dist(plugin_path, "fake-good", "goodplug", "fake_physgen_good", GOOD)
    monkeypatch.setenv("PHYSGEN_DISABLE_PLUGINS", "goodplug, other")
    reg = Registry()
    assert "fake_points" not in reg.names("datasets")
    info = next(p for p in reg.plugins if p.name == "goodplug")
    assert not info.ok and "disabled" in info.reason


def test_unknown_name_lists_available():
    with pytest.raises(ConfigError, match=r"unknown process 'nope' \(available: .*edm"):
        Registry().process("nope")


def test_cli_plugins_shows_broken_plugin_and_edm_still_trains(plugin_path, tmp_path):
    make_plugin_dist(
        plugin_path,
        "fake-broken",
        "brokenplug",
        "fake_physgen_broken",
        "raise ImportError('deliberately broken')\n",
    )
    out = subprocess.run(
        [sys.executable, "-m", "physgen.cli", "plugins"], capture_output=True, text=True, check=True
    ).stdout
    assert "brokenplug" in out and "BROKEN: ImportError: deliberately broken" in out
    assert "edm" in out and "views: ode, denoiser, score" in out
