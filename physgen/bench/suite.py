"""A benchmark suite: what to train and sample, read from TOML or built in, validated in one
pass where every bad field is one line naming it.

A suite file (every key optional; these are the built-in defaults)::

    datasets = ["moons"]                 # registered names, or .npy/.npz/.h5 files
    processes = "all"                    # or a list of labels: ["edm", "cfm", "cd"]
    samplers = []                        # for every process; [] = each process's defaults
    nfe = [1, 2, 4, 8, 16, 32]           # NFE budgets: each sampler takes the most steps that fit
    seeds = [0]                          # one trained model per (dataset, process, seed)
    n_data = 20000                       # training examples drawn from a built-in dataset
    n_samples = 1000                     # samples per cell, and fresh reference examples
    metrics = ["sliced_w2", "mmd2_unbiased"]  # registered metric names

    [train]                              # one budget for every process (physgen.TrainConfig)
    steps = 1500
    batch_size = 256
    lr = 2e-3
    ema_decay = 0.995
    grad_clip = 1.0

    [network]                            # one backbone for every process
    name = "mlp"
    config = {}                          # the backbone's options (`physgen plugins networks`)

    [process.cd]                         # per-process settings, by label
    teacher = "edm"                      # distil from this suite's edm model (same data, seed)
    samplers = ["consistency"]
    options = {}                         # process options (`physgen plugins processes`)

    [process.pfgmpp-D8]                  # a second configuration of one process, by label
    process = "pfgmpp"
    options = { D = 8 }

``processes = "all"`` takes every installed process; one whose needs cannot be met (an
option without a usable default, no sampler with an NFE rule) is skipped with a note, where a
listed process would be an error. A process with a ``teacher`` option (consistency
distillation) gets ``teacher = "edm"`` when none is given and ``edm`` is installed; at run time
the option is set to the teacher model's checkpoint path. A process option ``total_steps``
(consistency training's N(k) schedule) defaults to ``train.steps``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from physgen.core.options import typed_options
from physgen.errors import ConfigError
from physgen.training.config import TrainConfig, config_from

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["BUDGET", "DEFAULT_METRICS", "ProcessSpec", "Suite", "load_suite", "parse_suite"]

#: Metrics of the built-in suite (those installed); a suite file lists its own.
DEFAULT_METRICS = ("sliced_w2", "mmd2_unbiased")
#: Sampler preference for a process without a list: the first two it can serve.
PREFERRED_SAMPLERS = ("dpmpp_2m", "flowmap", "heun", "consistency", "ancestral", "euler")
#: The sampler a process's own paper uses, run besides the shared ones so that the table shows
#: each process as published: DDPM's Algorithm 2 (Ho et al. 2020), and ancestral sampling for
#: VE/SMLD and VP (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Table 1).
PAPER_SAMPLERS = {"ddpm": "ancestral", "vp": "ancestral", "ve": "ancestral"}
#: Teacher preference for a process with a ``teacher`` option (distillation) and none given.
PREFERRED_TEACHERS = ("edm",)
#: Teacher preference for a process with a ``pairs`` option (reflow: it trains on the pairs
#: ``(z, ODE(z))`` of its teacher, Liu et al. 2023) and none given: 1-rectified flow is I-CFM.
PREFERRED_REFLOW_TEACHERS = ("cfm", "otcfm", "edm")

_TOP = {
    "datasets", "processes", "samplers", "nfe", "seeds", "n_data", "n_samples", "metrics",
    "train", "network", "process",
}  # fmt: skip


#: The fields of :class:`physgen.training.TrainConfig` a suite's ``[train]`` table sets (the
#: same names, types and ranges), and the bench's defaults where they differ from the CLI's.
BUDGET = ("steps", "batch_size", "lr", "ema_decay", "grad_clip")
BUDGET_DEFAULTS = TrainConfig(steps=1500, ema_decay=0.995)


@dataclass(frozen=True)
class ProcessSpec:
    """One process of the suite under its label."""

    label: str
    #: the registered process name
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    #: samplers to run (resolved: never empty after :func:`parse_suite`)
    samplers: tuple[str, ...] = ()
    #: label of the process in this suite whose trained model this one distils
    teacher: str | None = None


@dataclass(frozen=True)
class Suite:
    """A validated suite; :meth:`to_dict` is what the run file records and resume compares."""

    datasets: tuple[str, ...] = ("moons",)
    processes: tuple[ProcessSpec, ...] = ()
    nfe: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    seeds: tuple[int, ...] = (0,)
    n_data: int = 20_000
    n_samples: int = 1000
    metrics: tuple[str, ...] = DEFAULT_METRICS
    #: the training budget (the :data:`BUDGET` fields; the others keep TrainConfig's defaults)
    train: TrainConfig = BUDGET_DEFAULTS
    network: str = "mlp"
    network_config: dict[str, Any] = field(default_factory=dict)
    #: why processes of ``processes = "all"`` were left out (not part of the comparison key)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (lists, not tuples), as the run file's ``/config`` holds them."""
        out = dataclasses.asdict(self)
        out.pop("notes")
        out["train"] = {k: out["train"][k] for k in BUDGET}
        loaded: dict[str, Any] = json.loads(json.dumps(out))
        return loaded

    def to_toml(self) -> str:
        """The suite as a suite file: ``load_suite`` of this text gives this suite back."""
        d = self.to_dict()
        lines = [f"{k} = {_toml(d[k])}" for k in ("datasets", "nfe", "seeds", "n_data",
                 "n_samples", "metrics")]  # fmt: skip
        lines.append(f"processes = {_toml([p['label'] for p in d['processes']])}")
        lines += ["", "[train]", *(f"{k} = {_toml(v)}" for k, v in d["train"].items())]
        lines += ["", "[network]", f"name = {_toml(d['network'])}"]
        lines.append(f"config = {_toml(d['network_config'])}")
        for p in d["processes"]:
            lines += ["", f"[process.{_key(p['label'])}]", f"process = {_toml(p['name'])}"]
            lines += [f"samplers = {_toml(p['samplers'])}", f"options = {_toml(p['options'])}"]
            if p["teacher"] is not None:
                lines.append(f"teacher = {_toml(p['teacher'])}")
        return "\n".join(lines) + "\n"

    def process(self, label: str) -> ProcessSpec:
        return next(p for p in self.processes if p.label == label)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml(value: Any) -> str:
    """A TOML value for JSON-like ``value`` (JSON strings are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if value is None:
        raise ConfigError("TOML has no null value")
    return json.dumps(value)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; errors are one line starting with the file name."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"suite file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    return parse_suite(data, source=str(path))


def parse_suite(data: dict[str, Any], *, source: str = "suite") -> Suite:
    """Validate a suite given as a dict (parsed TOML); ``{}`` is the built-in suite."""
    try:
        return _parse(data)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


# -- field checks: each raises one line naming the field -------------------------------------


def unknown_keys(table: dict[str, Any], known: set[str], where: str) -> None:
    """One line naming the first key of ``table`` not in ``known``."""
    for key in table:
        if key not in known:
            raise ConfigError(f"unknown key {where}{key} (keys: {', '.join(sorted(known))})")


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return value


def _ints(value: Any, name: str, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{name} must be a non-empty list of integers, got {value!r}")
    out = tuple(_int(v, f"{name} entry", minimum) for v in value)
    if len(set(out)) != len(out):
        raise ConfigError(f"{name} has duplicate entries: {value!r}")
    return tuple(sorted(out))


def strs(value: Any, name: str, *, empty: bool = False) -> tuple[str, ...]:
    """A list of distinct strings, else one line naming ``name``."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a list of strings, got {value!r}")
    if not value and not empty:
        raise ConfigError(f"{name} must not be empty")
    if len(set(value)) != len(value):
        raise ConfigError(f"{name} has duplicate entries: {value!r}")
    return tuple(value)


def as_table(value: Any, name: str) -> dict[str, Any]:
    """A TOML table, else one line naming ``name``."""
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a table, got {value!r}")
    return value


# -- the suite -------------------------------------------------------------------------------


def _parse(data: dict[str, Any]) -> Suite:
    from physgen.registry import get_registry

    reg = get_registry()
    unknown_keys(data, _TOP, "")
    d = Suite()
    datasets = strs(data.get("datasets", list(d.datasets)), "datasets")
    for spec in datasets:
        _check_dataset(spec)
    stems = [Path(spec).stem for spec in datasets]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"datasets: two entries share a name ({', '.join(stems)})")
    metrics_given = "metrics" in data
    metrics = strs(data.get("metrics", list(d.metrics)), "metrics")
    if metrics_given:
        for m in metrics:
            _metric(m)
    else:  # the built-in list, as far as it is installed
        metrics = tuple(m for m in metrics if m in reg.names("metrics")) or ("sliced_w2",)
    network = as_table(data.get("network", {}), "network")
    unknown_keys(network, {"name", "config"}, "network.")
    net_name = network.get("name", d.network)
    if not isinstance(net_name, str):
        raise ConfigError(f"network.name must be a string, got {net_name!r}")
    net_config = as_table(network.get("config", {}), "network.config")
    typed_options(f"network.config: {net_name!r}", net_config, reg.network(net_name).config)
    suite = Suite(
        datasets=datasets,
        nfe=_ints(data.get("nfe", list(d.nfe)), "nfe", 1),
        seeds=_ints(data.get("seeds", list(d.seeds)), "seeds", 0),
        n_data=_int(data.get("n_data", d.n_data), "n_data", 2),
        n_samples=_int(data.get("n_samples", d.n_samples), "n_samples", 2),
        metrics=metrics,
        train=_train(as_table(data.get("train", {}), "train")),
        network=net_name,
        network_config=dict(net_config),
    )
    samplers = strs(data.get("samplers", []), "samplers", empty=True)
    for s in samplers:
        check_sampler(s)
    from physgen.bench.processes import with_processes

    return with_processes(suite, data, samplers)


def _check_dataset(spec: str) -> None:
    from physgen.data import FILE_SUFFIXES
    from physgen.registry import get_registry

    reg = get_registry()
    if spec in reg.names("datasets"):
        return
    if Path(spec).suffix.lower() in FILE_SUFFIXES:
        if not Path(spec).is_file():
            raise ConfigError(f"datasets: file not found: {spec}")
        return
    known = ", ".join(reg.names("datasets"))
    raise ConfigError(
        f"datasets: unknown dataset {spec!r} (available: {known}; or a file ending in "
        f"{', '.join(FILE_SUFFIXES)})"
    )


def _metric(name: str) -> None:
    from physgen.registry import get_registry

    reg = get_registry()
    if name not in reg.names("metrics"):
        known = ", ".join(reg.names("metrics"))
        raise ConfigError(f"metrics: unknown metric {name!r} (available: {known})")


def check_sampler(name: str, where: str = "samplers") -> Any:
    """The registered fixed-step sampler ``name``, else one line naming ``where``."""
    from physgen.registry import get_registry

    reg = get_registry()
    if name not in reg.names("samplers"):
        known = ", ".join(reg.names("samplers"))
        raise ConfigError(f"{where}: unknown sampler {name!r} (available: {known})")
    spec = reg.sampler(name)
    if spec.nfe is None:
        raise ConfigError(
            f"{where}: sampler {name!r} is adaptive (no NFE rule); bench compares fixed-step "
            "samplers at NFE budgets"
        )
    return spec


def _train(table: dict[str, Any]) -> TrainConfig:
    unknown_keys(table, set(BUDGET), "train.")
    try:
        budget: TrainConfig = config_from(TrainConfig, table, "train", base=BUDGET_DEFAULTS)
    except ConfigError as err:
        raise ConfigError(f"train.{err}") from None
    return budget
