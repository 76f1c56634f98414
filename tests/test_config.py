"""One declaration per option (physgen.training.TrainConfig, physgen.cli.train.TrainRun,
physgen.cli.sample.SampleConfig), and the surfaces derived from it: the click options, the
PHYSGEN_* variables, the [train]/[sample] keys of --config, train()'s keywords and the bench
suite's [train] budget. Each surface must show the same names, defaults and ranges, and refuse
the same bad values (no coercion) with one line naming the option."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
import torch
from click.testing import CliRunner

import physgen
from physgen.bench import parse_suite
from physgen.bench.suite import BUDGET, BUDGET_DEFAULTS
from physgen.cli import cli
from physgen.cli.config import command_configs, load_toml_defaults
from physgen.cli.options import envvar, flag
from physgen.cli.sample import SampleConfig
from physgen.cli.sample import sample as sample_command
from physgen.cli.train import TrainRun
from physgen.cli.train import train as train_command
from physgen.errors import ConfigError
from physgen.training import TrainConfig, train
from physgen.training.config import field_types

SURFACES = [("train", train_command, (TrainRun, TrainConfig)),
            ("sample", sample_command, (SampleConfig,))]  # fmt: skip


def _fields(configs: tuple[type, ...]) -> list[tuple[dataclasses.Field, Any, bool]]:
    out = []
    for cls in configs:
        types = field_types(cls)
        out += [(f, *types[f.name]) for f in dataclasses.fields(cls)]
    return out


def _outside(f: dataclasses.Field, base: Any) -> list[Any]:
    """Values the field's declared range or type excludes, built from the metadata alone."""
    m = f.metadata
    bad: list[Any] = []
    if base is int:
        bad += [5.9, True]
    if base is float:
        bad += [math.nan, math.inf, True]
    if base in (int, float):
        step = 1 if base is int else 1e-9
        if m["min"] is not None:
            bad.append(m["min"] if m["min_open"] else m["min"] - step)
        if m["max"] is not None:
            bad.append(m["max"] if m["max_open"] else m["max"] + step)
    if m["choices"]:
        bad.append("not-a-choice")
    if base is str:
        bad.append(5)
    if base is bool:
        bad.append(1)
    return bad


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return repr(value)


@pytest.mark.parametrize(("command", "click_cmd", "configs"), SURFACES)
def test_cli_options_are_the_fields(command: str, click_cmd: click.Command, configs: Any) -> None:
    """Every field is one click option: its name, flag, default, variable and help."""
    params = {p.name: p for p in click_cmd.params if isinstance(p, click.Option)}
    fields = _fields(configs)
    assert set(params) - {"help"} == {f.name for f, _, _ in fields}
    for f, base, _ in fields:
        p = params[f.name]
        assert flag(f) in p.opts, (f.name, p.opts)
        assert (
            p.envvar
            == envvar(command, f)
            == ("PHYSGEN_" + command.upper() + "_" + flag(f).lstrip("-").replace("-", "_").upper())
        )
        expected = () if base == tuple[str, ...] else f.default
        assert p.default == expected, f.name
        assert f.metadata["help"].split("  [")[0] in (p.help or ""), f.name


@pytest.mark.parametrize(("command", "click_cmd", "configs"), SURFACES)
def test_every_surface_refuses_values_outside_the_declaration(
    command: str, click_cmd: click.Command, configs: Any, tmp_path: Path
) -> None:
    """The dataclass, the command line, the environment and --config refuse every value the
    declaration excludes, each in one line naming the option."""
    params = {p.name: p for p in click_cmd.params}
    runner = CliRunner()
    checked = 0
    for f, base, _ in _fields(configs):
        for bad in _outside(f, base):
            checked += 1
            cls = next(c for c in configs if f.name in {g.name for g in dataclasses.fields(c)})
            with pytest.raises(ConfigError, match=f"^{f.name} must be"):
                cls(**{f.name: bad})
            cfg = tmp_path / "c.toml"
            cfg.write_text(f"[{command}]\n{f.name} = {_toml(bad)}\n")
            with pytest.raises(ConfigError, match=rf"\[{command}\] {f.name} must be"):
                load_toml_defaults(cfg, {"train", "sample", "bench", "plugins"})
            if base not in (int, float) or isinstance(bad, bool):
                continue  # flags take no value; from a shell, "5" is a fine string
            with pytest.raises(click.BadParameter, match=f"{f.name} must be"):
                params[f.name].type.convert(str(bad), None, None)
            r = runner.invoke(cli, [command, flag(f), str(bad)])
            assert r.exit_code == 2 and f"{f.name} must be" in r.output, (f.name, r.output)
            r = runner.invoke(cli, [command], env={envvar(command, f): str(bad)})
            assert r.exit_code == 2 and f"{f.name} must be" in r.output, (f.name, r.output)
    assert checked > 20


def test_toml_refuses_unknown_keys_and_tables(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    for text, phrase in [
        ("[train]\nstep = 3", "[train] has no key 'step'"),
        ("[train]\nema = 0.9", "[train] has no key 'ema'"),
        ("[train]\n[train.steps]\nx = 1", "steps must be a value, not a table"),
        ("[train]\nprocess_options = 3", "process_options must be a table of name = value"),
        ("[train]\nprocess_options = { a = { b = 1 } }", "process_options must be a table"),
        ("[train]\nseed = 1e400", "seed must be an integer"),
        ("[train]\nsteps = [1, 2]", "steps must be an integer"),
        ("[train]\nout = 5", "out must be a string"),
        ("[sample]\nguidance_interval = [1.0]", "guidance_interval must be two numbers"),
    ]:
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=r"c\.toml: ") as err:
            load_toml_defaults(cfg, {"train", "sample"})
        assert phrase in str(err.value), (text, str(err.value))
    cfg.write_text("[train]\nbatch-size = 64\nlr = 1\nprocess_options = { D = 128, flag = true }")
    assert load_toml_defaults(cfg, {"train"})["train"] == {
        "batch_size": 64, "lr": 1.0, "process_options": ("D=128", "flag=true"),
    }  # fmt: skip


def test_precedence_and_the_recorded_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """command line > PHYSGEN_TRAIN_* > [train] > TrainConfig's default, for every option
    kind; the multi-valued -o/--net-opt take their values from the environment too."""
    seen: list[tuple[TrainRun, TrainConfig]] = []
    monkeypatch.setattr(
        "physgen.cli.train_run.run_train", lambda run, cfg, ctx: seen.append((run, cfg))
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nsteps = 7\nlr = 0.5\nbatch_size = 8\nnet_options = { width = 8 }\n")
    env = {"PHYSGEN_TRAIN_LR": "0.25", "PHYSGEN_TRAIN_BATCH_SIZE": "16",
           "PHYSGEN_TRAIN_OPTION": "D=128 rho=7", "PHYSGEN_TRAIN_COMPILE": "1"}  # fmt: skip
    r = CliRunner().invoke(cli, ["--config", str(cfg), "train", "--batch-size", "32"], env=env)
    assert r.exit_code == 0, r.output
    run, loop = seen[-1]
    assert (loop.steps, loop.lr, loop.batch_size, loop.compile) == (7, 0.25, 32, True)
    assert loop.ema_decay == TrainConfig().ema_decay == 0.999
    assert run.process_options == ("D=128", "rho=7") and run.net_options == ("width=8",)


@pytest.mark.parametrize(
    "name", ["PHYSGEN_TRAIN_NET_OPTIONS", "PHYSGEN_TRAIN_EMA", "PHYSGEN_TRAIN_X"]
)
def test_unknown_environment_variable_is_named(name: str) -> None:
    r = CliRunner().invoke(cli, ["train"], env={name: "1"})
    assert r.exit_code == 2 and f"environment variable {name} names no option" in r.output


def test_python_train_takes_the_same_options() -> None:
    """train()'s keywords are TrainConfig's fields with the CLI's defaults; a misspelt one is
    one line naming it, and the bench's [train] budget is a subset with the same checks."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert (defaults["lr"], defaults["steps"], defaults["checkpoint_every"]) == (2e-3, 3000, 1000)
    process, data = physgen.get_process("edm"), SimpleNamespace(x=torch.randn(8, 2), name="t")
    net = physgen.get_network("mlp", (2,), width=8, depth=1)
    with pytest.raises(ConfigError, match="train\\(\\) has no option 'ema'"):
        train(process, net, data, ema=0.9, progress=False)
    with pytest.raises(ConfigError, match=r"^steps must be an integer ≥ 1, got 2\.5$"):
        train(process, net, data, steps=2.5, progress=False)
    assert set(BUDGET) <= set(defaults)
    assert parse_suite({}).to_dict()["train"] == {k: getattr(BUDGET_DEFAULTS, k) for k in BUDGET}
    for key in BUDGET:
        f = next(g for g in dataclasses.fields(TrainConfig) if g.name == key)
        for bad in _outside(f, field_types(TrainConfig)[key][0]):
            with pytest.raises(ConfigError, match=f"train.{key} must be"):
                parse_suite({"train": {key: bad}})
    assert command_configs("train") == (TrainRun, TrainConfig)


def test_grad_clip_zero_means_off() -> None:
    """--grad-clip 0 is accepted and trains without clipping: bitwise the run whose bound
    (1e30) is never reached, while a bound that bites (1e-12) gives a different run."""
    process, data = physgen.get_process("edm"), physgen.load_dataset("moons", 64, seed=0)

    def run(clip: float) -> torch.Tensor:
        net = physgen.get_network("mlp", (2,), width=8, depth=1)
        res = train(process, net, data, steps=3, batch_size=16, grad_clip=clip, progress=False)
        return torch.cat([p.flatten() for p in res.net.parameters()])

    off = run(0.0)
    assert torch.equal(off, run(1e30))
    assert not torch.equal(off, run(1e-12))
    assert TrainConfig(grad_clip=0).grad_clip == 0.0
