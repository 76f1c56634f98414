"""Misbehaving plugins: each is named (plugin, package, what failed) and the rest keep working.

Every plugin here is a real installed distribution (``make_plugin_dist``: a module and a
``.dist-info`` with its entry point), broken in one way: at import (an exception, ``sys.exit``,
``KeyboardInterrupt``), in a hook, or at run time (a process's loss or view, a sampler, a
network of the wrong output shape, a dataset returning an ndarray, a metric). Property: one
line naming the plugin and its package, exit status 2 from the CLI, never a traceback, and the
built-in plugins still work. A plugin that prints does not corrupt a command's stdout.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import physgen
from physgen.cli import cli
from physgen.errors import ConfigError, PluginError
from physgen.registry import Registry, manager
from tests.conftest import make_plugin_dist

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: a process like EDM whose loss raises when ``-o flaky_from=K`` steps have passed (0: always),
#: and whose denoiser fails when sampled
FRAGILE = """
import dataclasses

from physgen import hookimpl
from physgen.core.options import option
from physgen.core.precond import PrecondOptions
from physgen.registry import ProcessEntry


@hookimpl
def physgen_processes():
    from physgen_diffusion.edm import EDM

    @dataclasses.dataclass(frozen=True)
    class FragileOptions(PrecondOptions):
        flaky_from: int = option(0, "the first training step whose loss raises")

    class Fragile(EDM):
        Options = FragileOptions

        def loss(self, net, y, *, step=0, **kwargs):
            if step >= self.options.flaky_from:
                raise ZeroDivisionError("the loss divides by zero")
            return super().loss(net, y, step=step, **kwargs)

        def denoiser(self, net, cond=None):
            def denoise(x, sigma):
                raise RuntimeError("no denoiser today")

            return dataclasses.replace(super().denoiser(net, cond), denoise=denoise)

    return [ProcessEntry("fragile", Fragile, "a process whose loss and denoiser raise")]
"""

PARTS = """
import numpy as np
import torch

from physgen import hookimpl
from physgen.registry import DatasetEntry, MetricEntry, NetworkEntry
from physgen.solvers import Sampler


class Half(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.lin = torch.nn.Linear(dim, 1)

    def forward(self, x, noise_label, class_labels=None):
        return self.lin(x)


def bad_metric(samples, reference, *, generator=None):
    raise ValueError("cannot compare")


def bad_sampler(field, x, grid, *, generator=None):
    raise IndexError("grid index out of range")


@hookimpl
def physgen_networks():
    return [
        NetworkEntry("half", lambda shape, k, **c: Half(shape[0]), "output of the wrong shape"),
        NetworkEntry("nonet", lambda shape, k, **c: "a string", "not a module"),
    ]


@hookimpl
def physgen_datasets():
    return [DatasetEntry("rawarray", lambda n, seed=0: np.zeros((n, 2)), "an ndarray")]


@hookimpl
def physgen_metrics():
    return [MetricEntry("bad_metric", bad_metric, "raises")]


@hookimpl
def physgen_samplers():
    return [Sampler(name="bad_euler", fn=bad_sampler, view="ode", description="raises")]
"""

CHATTY = """
print("hello from import")

from physgen import hookimpl
from physgen.registry import ProcessEntry


@hookimpl
def physgen_processes():
    print("hello from the hook")
    from physgen_diffusion.edm import EDM

    class Chatty(EDM):
        def validate(self):
            print("hello from validate")
            super().validate()

        def loss(self, net, y, **kwargs):
            print("hello from the loss")
            return super().loss(net, y, **kwargs)

    return [ProcessEntry("chatty", Chatty, "prints everywhere")]
"""


@pytest.fixture
def installed(plugin_path, monkeypatch):
    """Install plugins (``(dist, entry, module, source)``) and make the process-wide registry
    see them; the registry is restored afterwards."""

    def install(*plugins: tuple[str, str, str, str]) -> Registry:
        for dist, entry, module, source in plugins:
            make_plugin_dist(plugin_path, dist, entry, module, source)
        reg = Registry()
        monkeypatch.setattr(manager, "_REGISTRY", reg)
        return reg

    return install


def _fragile(installed):  # type: ignore[no-untyped-def]
    return installed(("fake-fragile", "fragileplug", "fake_physgen_fragile", FRAGILE))


def _parts(installed):  # type: ignore[no-untyped-def]
    return installed(("fake-parts", "partsplug", "fake_physgen_parts", PARTS))


def _one_line_exit_2(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return str(result.output)


# -- loading --------------------------------------------------------------------------------


def test_exit_and_interrupt_at_import_mark_the_plugin_broken(plugin_path):
    """``sys.exit()`` or ``KeyboardInterrupt`` at a plugin's import used to end every command
    silently; now the plugin is listed as broken and ``physgen plugins`` exits 0."""
    make_plugin_dist(
        plugin_path, "fake-exit", "exitplug", "fake_physgen_exit", "import sys\nsys.exit(4)\n"
    )
    make_plugin_dist(
        plugin_path, "fake-kbd", "kbdplug", "fake_physgen_kbd", "raise KeyboardInterrupt\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "physgen.cli", "plugins"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    lines = {line.split()[0]: line for line in run.stdout.splitlines() if line.startswith("  ")}
    assert "fake-exit" in lines["exitplug"] and "BROKEN: SystemExit: 4" in lines["exitplug"]
    assert "fake-kbd" in lines["kbdplug"] and "BROKEN: KeyboardInterrupt" in lines["kbdplug"]
    assert "views: ode, denoiser, score" in run.stdout  # edm still listed


def test_a_real_ctrl_c_while_loading_still_interrupts(plugin_path):
    """A SIGINT that arrives while a plugin imports is the user's, not the plugin's failure."""
    slow = "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\n"
    make_plugin_dist(plugin_path, "fake-slow", "slowplug", "fake_physgen_slow", slow)
    code = "from physgen.registry import Registry\nRegistry()\nprint('loaded')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "loaded" not in run.stdout
    assert "KeyboardInterrupt" in run.stderr


@pytest.mark.parametrize("raised", ["SystemExit(3)", "KeyboardInterrupt()", "RuntimeError('x')"])
def test_a_hook_raising_anything_is_isolated(plugin_path, raised):
    source = f"""
    from physgen import hookimpl
    from physgen.registry import DatasetEntry

    @hookimpl
    def physgen_processes():
        raise {raised}

    @hookimpl
    def physgen_datasets():
        return [DatasetEntry("survivor", lambda n, seed=0: None, "still here")]
    """
    make_plugin_dist(plugin_path, "fake-hook", "hookplug", "fake_physgen_hook", source)
    reg = Registry()
    info = next(p for p in reg.plugins if p.name == "hookplug")
    assert not info.ok and info.reason.startswith(f"physgen_processes: {raised.split('(')[0]}")
    assert "survivor" in reg.names("datasets") and "edm" in reg.names("processes")


def test_an_unknown_name_points_at_the_plugins_that_did_not_load(plugin_path):
    source = "raise ImportError('needs torch_cluster')\n"
    make_plugin_dist(plugin_path, "fake-broken", "brokenplug", "fake_physgen_broken", source)
    with pytest.raises(ConfigError) as caught:
        Registry().process("graphflow")
    message = str(caught.value)
    assert message.startswith("unknown process 'graphflow' (available: ")
    assert message.endswith(
        "broken plugins: brokenplug (fake-broken): ImportError: needs torch_cluster"
    )


def test_a_misspelt_hookimpl_is_reported(plugin_path):
    source = """
    from physgen import hookimpl

    @hookimpl
    def physgen_proceses():
        return []
    """
    make_plugin_dist(plugin_path, "fake-typo", "typoplug", "fake_physgen_typo", source)
    info = next(p for p in Registry().plugins if p.name == "typoplug")
    assert not info.ok and "physgen_proceses: no such hook" in info.reason


# -- run time -------------------------------------------------------------------------------


def test_a_raising_loss_names_plugin_package_and_process(installed):
    _fragile(installed)
    data = physgen.load_dataset("moons", 64)
    net = physgen.get_network("mlp", data.event_shape, width=8)
    expected = (
        r"^plugin 'fragileplug' \(package fake-fragile\): process 'fragile' loss failed: "
        r"ZeroDivisionError: the loss divides by zero$"
    )
    with pytest.raises(PluginError, match=expected) as caught:
        physgen.train(physgen.get_process("fragile"), net, data, steps=2, batch_size=8,
                      progress=False, checkpoint=None)  # fmt: skip
    assert isinstance(caught.value.__cause__, ZeroDivisionError)  # --debug shows where


def test_cli_train_with_a_raising_loss_is_one_line(installed, tmp_path):
    _fragile(installed)
    args = [
        "train",
        "-q",
        "-p",
        "fragile",
        "--steps",
        "2",
        "--n-data",
        "64",
        "--out",
        str(tmp_path),
    ]
    out = _one_line_exit_2(CliRunner().invoke(cli, args))
    assert "plugin 'fragileplug' (package fake-fragile): process 'fragile' loss failed" in out


def test_a_raising_view_names_the_process_and_the_view(installed):
    _fragile(installed)
    net = physgen.get_network("mlp", (2,), width=8)
    with pytest.raises(PluginError, match=r"process 'fragile' ode view failed: RuntimeError"):
        physgen.sample(physgen.get_process("fragile"), net, (2,), n=4, steps=2)
    # a built-in process on the same net still samples
    assert physgen.sample(physgen.get_process("edm"), net, (2,), n=4, steps=2).x.shape == (4, 2)


def test_a_raising_sampler_names_its_plugin(installed):
    _parts(installed)
    net = physgen.get_network("mlp", (2,), width=8)
    process = physgen.get_process("edm")
    expected = r"plugin 'partsplug' \(package fake-parts\): sampler 'bad_euler' failed: IndexError"
    with pytest.raises(PluginError, match=expected):
        physgen.sample(process, net, (2,), n=4, sampler="bad_euler", steps=2)


def test_a_network_of_the_wrong_shape_is_refused_when_built(installed):
    _parts(installed)
    with pytest.raises(PluginError, match=r"network 'half' returns \[2, 1\] for input \[2, 2\]"):
        physgen.get_network("half", (2,))
    with pytest.raises(PluginError, match=r"network 'nonet' returned str, expected a torch"):
        physgen.get_network("nonet", (2,))
    with pytest.raises(ConfigError, match="network 'mlp' has no option 'widht'"):
        physgen.get_network("mlp", (2,), widht=3)  # a user error stays a ConfigError


def test_a_dataset_returning_an_ndarray_is_named(installed, tmp_path):
    _parts(installed)
    with pytest.raises(PluginError, match=r"dataset 'rawarray' returned ndarray, expected"):
        physgen.load_dataset("rawarray", 16)
    args = ["train", "-q", "-d", "rawarray", "--steps", "1", "--out", str(tmp_path / "r")]
    assert "partsplug" in _one_line_exit_2(CliRunner().invoke(cli, args))
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()


def test_a_raising_metric_is_named_and_the_others_work(installed):
    reg = _parts(installed)
    x, y = torch.randn(32, 2), torch.randn(32, 2)
    with pytest.raises(PluginError, match=r"metric 'bad_metric' failed: ValueError: cannot"):
        reg.metric("bad_metric").fn(x, y)
    assert np.isfinite(reg.metric("sliced_w2").fn(x, y, generator=torch.Generator()))


def test_bench_reports_and_skips_a_process_that_breaks_while_training(installed, tmp_path):
    """The preflight (one loss at step 0) passes; the loss raises from step 1 on. The bench
    notes the process and its student, finishes the others and writes the table."""
    from physgen.bench import parse_suite, read_bench, run_bench

    _fragile(installed)
    suite = parse_suite({
        "processes": ["edm", "fragile"], "nfe": [2], "n_data": 64, "n_samples": 32,
        "metrics": ["sliced_w2"], "train": {"steps": 3, "batch_size": 16},
        "network": {"config": {"width": 8, "depth": 1, "emb_dim": 8}},
        "process": {"fragile": {"options": {"flaky_from": 1}, "samplers": ["euler"]}},
    })  # fmt: skip
    run = run_bench(suite, tmp_path / "b.h5", progress=False, echo=lambda _: None)
    notes = " ".join(run.notes)
    assert "skipped moons.fragile.s0" in notes and "fragileplug" in notes
    cells = read_bench(run.path, samples=False).cells
    assert cells and all(".edm." in name for name in cells)


# -- stdout stays clean ---------------------------------------------------------------------


def test_show_suite_stdout_is_toml_with_a_chatty_and_a_broken_plugin(plugin_path, tmp_path):
    """``physgen bench --show-suite > my.toml``: what plugins print goes to stderr; a process
    that fails its preflight and a plugin that exits at import are notes (TOML comments)."""
    make_plugin_dist(plugin_path, "fake-chatty", "chattyplug", "fake_physgen_chatty", CHATTY)
    make_plugin_dist(plugin_path, "fake-fragile", "fragileplug", "fake_physgen_fragile", FRAGILE)
    make_plugin_dist(
        plugin_path, "fake-exit", "exitplug", "fake_physgen_exit", "raise SystemExit(4)\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "physgen.cli", "bench", "--show-suite"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    suite = tomllib.loads(run.stdout)  # valid TOML, nothing printed into it
    assert "chatty" in suite["processes"] and "fragile" not in suite["processes"]
    assert "hello" not in run.stdout and "hello from import" in run.stderr
    assert "# note: skipped fragile" in run.stdout and "fragileplug" in run.stdout
    assert "# note: plugin exitplug (fake-exit) not loaded: SystemExit: 4" in run.stdout
