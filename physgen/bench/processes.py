"""The processes of a suite: labels, options, samplers, teachers, and a preflight check.

Part of :func:`physgen.bench.suite.parse_suite`; every error is one line naming the field.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from physgen.bench.suite import (
    PAPER_SAMPLERS,
    PREFERRED_REFLOW_TEACHERS,
    PREFERRED_SAMPLERS,
    PREFERRED_TEACHERS,
    ProcessSpec,
    Suite,
    as_table,
    check_sampler,
    strs,
    unknown_keys,
)
from physgen.errors import ConfigError, PluginError

__all__ = ["with_processes"]

_LABEL = re.compile(r"^[A-Za-z0-9_+=-]+$")


def with_processes(suite: Suite, data: dict[str, Any], samplers: tuple[str, ...]) -> Suite:
    """``suite`` with its processes resolved from ``processes``, ``samplers`` and the
    ``[process.<label>]`` tables of ``data``: labels checked, default samplers and teachers
    filled in, teachers ordered first, unmet needs skipped with a note under ``"all"``."""
    from physgen.registry import get_registry

    reg = get_registry()
    tables = as_table(data.get("process", {}), "process")
    raw = data.get("processes", "all")
    every = raw == "all"
    if every:
        labels = [*reg.names("processes"), *(t for t in tables if t not in reg.names("processes"))]
    else:
        labels = list(strs(raw, "processes"))
        for label in tables:
            if label not in labels:
                raise ConfigError(f"process.{label}: {label!r} is not listed in processes")
    specs, notes = [], []
    for label in labels:
        try:
            spec = _process(label, as_table(tables.get(label, {}), f"process.{label}"), suite)
            _preflight(spec, suite)
            specs.append(spec)
        except (ConfigError, PluginError) as err:  # a broken plugin is skipped like a misfit
            if not every or label in tables:
                raise
            notes.append(f"skipped {label}: {err}")
    if every:  # what "all" leaves out because its plugin did not load
        notes += [f"plugin {p.name} ({p.package}) not loaded: {p.reason}" for p in reg.broken()]
    specs = _resolve_samplers(specs, samplers, every, notes)
    specs = _resolve_teachers(specs, every, notes)
    if not specs:
        raise ConfigError("processes: nothing to run (" + "; ".join(notes) + ")")
    return dataclasses.replace(suite, processes=tuple(specs), notes=tuple(notes))


def _process(label: str, table: dict[str, Any], suite: Suite) -> ProcessSpec:
    from physgen.api import get_process
    from physgen.registry import get_registry

    where = f"process.{label}"
    if not _LABEL.match(label):
        raise ConfigError(f"{where}: a label may hold letters, digits and _+=- only")
    unknown_keys(table, {"process", "options", "samplers", "teacher"}, f"{where}.")
    name = table.get("process", label)
    if not isinstance(name, str):
        raise ConfigError(f"{where}.process must be a string, got {name!r}")
    if name not in get_registry().names("processes"):
        known = ", ".join(get_registry().names("processes"))
        what = "processes" if label == name and "process" not in table else f"{where}.process"
        raise ConfigError(f"{what}: unknown process {name!r} (available: {known})")
    options = dict(as_table(table.get("options", {}), f"{where}.options"))
    fields = _option_names(name)
    if "total_steps" in fields:
        options.setdefault("total_steps", suite.train.steps)
    teacher = table.get("teacher")
    if teacher is not None and not isinstance(teacher, str):
        raise ConfigError(f"{where}.teacher must be a process label, got {teacher!r}")
    if teacher is not None and not fields & {"teacher", "pairs"}:
        raise ConfigError(f"{where}.teacher: process {name!r} has no teacher or pairs option")
    if "pairs" in options:
        raise ConfigError(f"{where}.options: set teacher = LABEL (reflow pairs are generated)")
    if "teacher" in options:
        raise ConfigError(f"{where}.options: set teacher = LABEL in the table, not as an option")
    try:
        get_process(name, **options)
    except ConfigError as err:
        raise ConfigError(f"{where}.options: {err}") from None
    given = table.get("samplers")
    samplers = () if given is None else strs(given, f"{where}.samplers")
    return ProcessSpec(label, name, options, samplers, teacher)


def _preflight(spec: ProcessSpec, suite: Suite) -> None:
    """One loss evaluation on 8 examples of the first dataset with the suite's backbone, so that
    a process whose needs are unmet (a required file option) fails before any training. A
    distilling process is checked when its teacher exists."""
    import torch

    from physgen.api import get_network, get_process
    from physgen.data import load_dataset
    from physgen.errors import PhysgenError
    from physgen.registry import plugin_call

    if spec.teacher is not None or _teacher_kind(spec.name) is not None:
        return
    try:
        data = load_dataset(suite.datasets[0], 8, seed=0)
        process = get_process(spec.name, **spec.options)
        net = get_network(suite.network, data.event_shape, 0, process=process,
                          **suite.network_config)  # fmt: skip
        with torch.no_grad(), plugin_call(process, "setup and loss"):
            process.setup(net)
            process.loss(net, data.x, generator=torch.Generator().manual_seed(0))
    except PhysgenError as err:
        raise ConfigError(f"process {spec.label!r}: {err}") from None


def _teacher_kind(name: str) -> str | None:
    """``"distil"`` for a process with a ``teacher`` option, ``"reflow"`` for one that trains
    on reflow pairs (a ``pairs`` option), else None."""
    fields = _option_names(name)
    return "distil" if "teacher" in fields else "reflow" if "pairs" in fields else None


def _option_names(name: str) -> set[str]:
    from physgen.registry import get_registry, plugin_call

    reg = get_registry()
    with plugin_call(reg.plugin_of("processes", name), f"process {name!r} Options"):
        return {f.name for f in dataclasses.fields(reg.process(name).cls.Options)}


def _resolve_samplers(
    specs: list[ProcessSpec], default: tuple[str, ...], every: bool, notes: list[str]
) -> list[ProcessSpec]:
    from physgen.api import get_process
    from physgen.sampling import compatible_samplers

    out = []
    for p in specs:
        process = get_process(p.name, **p.options)
        fit = [s for s in compatible_samplers(process) if _sampler_ok(s)]
        where = f"process.{p.label}.samplers" if p.samplers else "samplers"
        chosen = p.samplers or default
        misfit = next((s for s in chosen if check_sampler(s, where) and s not in fit), None)
        if misfit is not None and every and not p.samplers:
            notes.append(f"skipped {p.label}: it cannot serve sampler {misfit!r}")
            continue
        if misfit is not None:
            raise ConfigError(
                f"{where}: process {p.label!r} cannot serve sampler {misfit!r} "
                f"(samplers that fit: {', '.join(fit) or 'none'}); set [process.{p.label}] samplers"
            )
        if not chosen:
            chosen = tuple(s for s in PREFERRED_SAMPLERS if s in fit)[:2] or tuple(fit[:1])
            paper = PAPER_SAMPLERS.get(p.name)
            if paper in fit and paper not in chosen:
                chosen = (*chosen, paper)
        if not chosen:
            if not every:
                raise ConfigError(f"processes: no installed fixed-step sampler fits {p.label!r}")
            notes.append(f"skipped {p.label}: no installed fixed-step sampler fits it")
            continue
        out.append(dataclasses.replace(p, samplers=chosen))
    return out


def _sampler_ok(name: str) -> bool:
    from physgen.registry import get_registry

    return get_registry().sampler(name).nfe is not None


def _resolve_teachers(specs: list[ProcessSpec], every: bool, notes: list[str]) -> list[ProcessSpec]:
    """Fill default teachers, check each names a suite process with the view its student needs
    (a denoiser to distil, an ODE to reflow), and order the processes so that every teacher
    trains before its students."""
    from physgen.api import get_process

    by_label = {p.label: p for p in specs}
    resolved: dict[str, ProcessSpec] = {}
    for p in specs:
        teacher = p.teacher
        kind = _teacher_kind(p.name)
        if teacher is None and kind is not None:
            prefer = PREFERRED_TEACHERS if kind == "distil" else PREFERRED_REFLOW_TEACHERS
            teacher = next((t for t in prefer if t in by_label), None)
            if teacher is None:
                msg = f"process {p.label!r} needs a teacher: set [process.{p.label}] teacher"
                if not every:
                    raise ConfigError(f"processes: {msg}")
                notes.append(f"skipped {p.label}: {msg}")
                continue
        if teacher is not None:
            where = f"process.{p.label}.teacher"
            if teacher not in by_label:
                known = ", ".join(by_label)
                raise ConfigError(f"{where}: {teacher!r} is not a process of this suite ({known})")
            view = "denoiser" if kind == "distil" else "ode"
            t = by_label[teacher]
            if view not in get_process(t.name, **t.options).views():  # the teacher's options
                raise ConfigError(f"{where}: {teacher!r} has no {view} view to learn from")
        resolved[p.label] = dataclasses.replace(p, teacher=teacher)
    ordered: list[ProcessSpec] = []
    for label in resolved:
        _visit(label, resolved, ordered, [])
    return ordered


def _visit(
    label: str, specs: dict[str, ProcessSpec], out: list[ProcessSpec], path: list[str]
) -> None:
    if any(p.label == label for p in out):
        return
    if label in path:
        raise ConfigError(f"process.{label}.teacher: teachers form a cycle ({' → '.join(path)})")
    p = specs[label]
    if p.teacher is not None:
        if p.teacher not in specs:
            raise ConfigError(f"process.{label}.teacher: {p.teacher!r} was skipped")
        _visit(p.teacher, specs, out, [*path, label])
    out.append(p)
