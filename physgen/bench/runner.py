"""Run a suite: train each (dataset, process, seed) once, sample it at every NFE budget with
every sampler, score the samples, and record each finished piece in the run file at once.

Order and reuse. Processes train in suite order, teachers first; all of a (dataset, seed)'s
processes start from the same initial weights (the backbone is built under
``torch.random.fork_rng`` seeded with the suite seed, leaving the global RNG as found) and see
the same data, batches and budget. Checkpoints go to ``<out stem>/checkpoints/`` through
:func:`physgen.train` (atomic, exact resume), so a killed run resumes training where its last
checkpoint left off and never retrains a finished model. Sampling always loads the checkpoint,
whether it was just written or found, so a resumed run samples exactly what a fresh one does.

NFE budget → steps. Each sampler's record declares ``nfe(grid)``; the cell takes the largest
step count whose grid costs at most the budget (a budget below one step's cost is skipped with
a note) and records the NFE the sampling driver counted. Every cell of a seed uses the same
sample seed, so samplers and processes start from the same prior noise where their priors
agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from physgen.bench import store
from physgen.bench.suite import ProcessSpec, Suite
from physgen.core.rng import derive_seed
from physgen.errors import CheckpointError, ConfigError, DataError, PluginError, TrainingError
from physgen.io.outputs import check_outputs, check_writable, lock_output
from physgen.registry import process_view

__all__ = ["BenchRun", "run_bench", "steps_for_budget"]


@dataclass
class BenchRun:
    """What :func:`run_bench` did."""

    path: Path
    #: cells sampled by this call, and cells found complete in the file
    computed: int = 0
    reused: int = 0
    #: models trained (or finished training) by this call
    trained: int = 0
    notes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


def side_dir(out: Path) -> Path:
    """Checkpoints, plots and the table live in ``<out without suffix>/``."""
    return out.with_suffix("")


def steps_for_budget(
    spec: Any, grid: Callable[[int], torch.Tensor], budget: int
) -> tuple[int, int]:
    """``(steps, nfe)``: the most steps whose grid the sampler ``spec`` runs in at most
    ``budget`` evaluations by its declared rule; ``(0, k)`` when one step already costs k."""
    params = inspect.signature(spec.nfe).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    options = {k: v for k, v in spec.options.items() if takes_all or k in params}
    best, first = (0, 0), None
    for steps in range(1, budget + 1):
        cost = int(spec.nfe(grid(steps), **options))
        first = cost if first is None else first
        if cost <= budget:
            best = (steps, cost)
    return best if best[0] else (0, first or 0)


def _view_grid(process: Any, net: Any, view: str) -> Callable[[int], torch.Tensor]:
    v = process_view(process, view, net)
    return v.grid if hasattr(v, "grid") else v.sigmas


class _Data:
    """Training data, held-out reference and a second held-out draw (the noise floor)."""

    def __init__(self, spec: str, suite: Suite, seed: int):
        from physgen.data import FILE_SUFFIXES, Dataset, load_dataset

        n, m = suite.n_data, suite.n_samples
        if Path(spec).suffix.lower() not in FILE_SUFFIXES:
            self.train = load_dataset(spec, n, seed=seed)
            self.reference = load_dataset(spec, m, seed=derive_seed(seed, "reference")).x
            self.floor = load_dataset(spec, m, seed=derive_seed(seed, "floor")).x
            return
        full = load_dataset(spec, n + 2 * m, seed=seed)  # a file: hold out 2m random rows
        if len(full) < 2 * m + 2:
            raise DataError(f"{spec}: {len(full)} rows; bench holds out 2 × n_samples = {2 * m}")
        g = torch.Generator().manual_seed(derive_seed(seed, "holdout"))
        perm = torch.randperm(len(full), generator=g)
        self.reference, self.floor = full.x[perm[:m]], full.x[perm[m : 2 * m]]
        self.train = Dataset(full.name, full.x[perm[2 * m :]], info=dict(full.info))


def label_of(spec: str) -> str:
    """A dataset's label in cell names: its registered name, or a file's stem."""
    return Path(spec).stem


def run_bench(
    suite: Suite,
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = True,
    command: str | None = None,
    echo: Callable[[str], None] = print,
) -> BenchRun:
    """Run ``suite`` into the HDF5 file ``out`` (layout: :mod:`physgen.bench.store`).

    An existing ``out`` made by the same suite is resumed (``resume=True``): its complete cells
    are kept and skipped. ``overwrite=True`` starts over (deleting the checkpoints an earlier
    bench run recorded writing, nothing else). A new run refuses any output that exists
    (:func:`outputs`) unless ``overwrite``; ``out`` is locked while the run lasts.
    """
    out, device = Path(out), torch.device(device)
    if out.suffix not in (".h5", ".hdf5"):
        raise ConfigError(f"--out must end in .h5 or .hdf5, got {out.name}")
    with lock_output(out, command or "physgen.bench.run_bench"):
        return _run_locked(suite, out, device, progress, overwrite, resume, command, echo)


def outputs(suite: Suite, out: Path) -> list[Path]:
    """Every file and directory a bench run into ``out`` writes: the run file, the checkpoint
    directory, the table and the plots of :func:`physgen.bench.report`."""
    side = side_dir(out)
    files = [out, side / "checkpoints", side / "table.md"]
    for spec in suite.datasets:
        label = label_of(spec)
        files += [side / f"quality-{label}-{m}.png" for m in suite.metrics]
        files += [side / f"samples-{label}.png", side / f"loss-{label}.png"]
    return files


#: the names of the files a bench run wrote into its checkpoint directory, one per line: an
#: ``--overwrite`` removes these and nothing else
MANIFEST = ".physgen-bench-written"


def _record(ckpt_dir: Path, path: Path) -> None:
    """Note ``path`` (in ``ckpt_dir``) as written by the bench before writing it."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with open(ckpt_dir / MANIFEST, "a") as f:
        f.write(path.name + "\n")


def _remove_written(ckpt_dir: Path) -> None:
    """Delete the files a previous bench run recorded in the manifest (only those)."""
    manifest = ckpt_dir / MANIFEST
    if not manifest.is_file():
        return
    for name in set(manifest.read_text().split("\n")):
        if name and "/" not in name and name not in (".", ".."):
            (ckpt_dir / name).unlink(missing_ok=True)
    manifest.unlink()
    with contextlib.suppress(OSError):
        ckpt_dir.rmdir()  # only when empty: anything else in it stays


def _run_locked(
    suite: Suite, out: Path, device: torch.device, progress: bool, overwrite: bool,
    resume: bool, command: str | None, echo: Callable[[str], None],
) -> BenchRun:  # fmt: skip
    start = time.perf_counter()
    ckpt_dir = side_dir(out) / "checkpoints"
    config = suite.to_dict()
    fresh = overwrite or not out.exists()
    if out.exists() and not overwrite:
        if not resume:
            raise ConfigError(
                f"{out} exists (re-run without --no-resume to resume it, or --overwrite)"
            )
        store.check_same_suite(out, config)
    # A new run refuses every output that exists (the checkpoints of another run included);
    # a resumed one writes only its own files. Either way, all must be writable.
    check_outputs(outputs(suite, out) if fresh else [], overwrite=overwrite)
    for path in outputs(suite, out):
        check_writable(path / "x" if path == ckpt_dir else path)
    if fresh:
        _remove_written(ckpt_dir)  # what an earlier bench wrote here, nothing else
        cmd = command if command is not None else "physgen.bench.run_bench"
        store.create(out, config, seed=suite.seeds[0], device=str(device), command=cmd,
                     overwrite=overwrite)  # fmt: skip
    store.remove_stale(out)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    result = BenchRun(out, notes=list(suite.notes))
    for note in suite.notes:
        echo(f"note: {note}")
    total = (
        len(suite.datasets)
        * len(suite.seeds)
        * len(suite.nfe)
        * sum(len(p.samplers) for p in suite.processes)
    )
    with tqdm(
        total=total, desc="bench", unit="cell", disable=not progress, dynamic_ncols=True
    ) as bar:
        runner = _Runner(suite, out, ckpt_dir, device, progress, bar, result, echo)
        for spec in suite.datasets:
            for seed in suite.seeds:
                runner.dataset_seed(spec, seed)
    result.wall_seconds = time.perf_counter() - start
    return result


class _Runner:
    def __init__(
        self, suite: Suite, out: Path, ckpt_dir: Path, device: torch.device, progress: bool,
        bar: Any, result: BenchRun, echo: Callable[[str], None],
    ):  # fmt: skip
        self.suite, self.out, self.ckpt_dir, self.device = suite, out, ckpt_dir, device
        self.progress, self.bar, self.result, self.echo = progress, bar, result, echo
        # checkpoints are named by the suite too, so that no other suite's are ever resumed
        self.tag = hashlib.sha256(json.dumps(suite.to_dict()).encode()).hexdigest()[:8]
        self.done = store.read_bench(out, samples=False)

    def note(self, text: str) -> None:
        self.result.notes.append(text)
        if self.progress:
            tqdm.write(f"note: {text}")
        else:
            self.echo(f"note: {text}")

    def dataset_seed(self, spec: str, seed: int) -> None:
        data: _Data | None = None
        label = label_of(spec)
        ref_name = f"{label}.s{seed}"
        broken: set[str] = set()  # labels whose plugin failed at run time, for this seed
        for p in self.suite.processes:
            run = f"{label}.{p.label}.s{seed}"
            if p.teacher in broken:
                self.note(f"skipped {run}: its teacher {p.teacher!r} failed")
                broken.add(p.label)
                continue
            cells = [(s, b) for s in p.samplers for b in self.suite.nfe]
            todo = [(s, b) for s, b in cells if f"{run}.{s}.nfe{b}" not in self.done.cells]
            self.result.reused += len(cells) - len(todo)
            self.bar.update(len(cells) - len(todo))
            if not todo:
                continue
            data = data or _Data(spec, self.suite, seed)
            if ref_name not in self.done.references:
                self._reference(ref_name, label, seed, data)
            try:
                ckpt = self._trained(p, run, label, seed, data)
                if ckpt is not None:
                    self._sample(p, run, label, seed, ckpt, todo, data.reference)
            except PluginError as err:  # one broken plugin is reported; the others still run
                self.note(f"skipped {run}: {err}")
                broken.add(p.label)

    def _reference(self, name: str, label: str, seed: int, data: _Data) -> None:
        floor = self._metrics(data.floor, data.reference, seed)
        attrs = {"dataset": label, "seed": seed, **{f"floor.{k}": v for k, v in floor.items()}}
        ref = data.reference.numpy().astype(np.float32)
        store.append(self.out, _putter("reference", name, ref, attrs))
        self.done = store.read_bench(self.out, samples=False)

    def _metrics(self, x: torch.Tensor, reference: torch.Tensor, seed: int) -> dict[str, float]:
        from physgen.registry import get_registry

        reg = get_registry()
        x, reference = x.detach().float().cpu(), reference.float().cpu()
        if not bool(torch.isfinite(x).all()):
            return {m: float("nan") for m in self.suite.metrics}
        return {
            m: float(reg.metric(m).fn(x, reference, generator=torch.Generator().manual_seed(seed)))
            for m in self.suite.metrics
        }

    def _checkpoint(self, run: str) -> Path:
        return self.ckpt_dir / f"{run}.{self.tag}.safetensors"

    def _trained(self, p: ProcessSpec, run: str, label: str, seed: int, data: _Data) -> Path | None:
        """The model's checkpoint, training it first (or finishing its training) if needed."""
        from physgen.api import get_network, get_process
        from physgen.data import load_dataset
        from physgen.io import read_checkpoint_meta
        from physgen.training import describe, train

        ckpt = self._checkpoint(run)
        if run in self.done.training:
            if not ckpt.is_file():
                raise CheckpointError(f"{ckpt} of a finished model is missing; pass --overwrite")
            return ckpt
        options = dict(p.options)
        train_data = data.train
        if p.teacher is not None:
            teacher = self._checkpoint(f"{label}.{p.teacher}.s{seed}")
            if "pairs" in get_process(p.name, **options).options_dict():
                pairs = self._reflow_pairs(run, teacher, seed)
                options["pairs"] = str(pairs)
                train_data = load_dataset(str(pairs), self.suite.n_data)
            else:
                options["teacher"] = str(teacher)
        process = get_process(p.name, **options)
        # the same initial weights for every process of this seed
        net = get_network(self.suite.network, train_data.event_shape, 0, seed=seed,
                          process=process, **self.suite.network_config)  # fmt: skip
        b = self.suite.train
        resumed = ckpt.is_file()
        if not resumed:
            _record(self.ckpt_dir, ckpt)
        start = int(read_checkpoint_meta(ckpt).get("step", 0)) if resumed else 0
        try:
            res = train(
                process, net.to(self.device), train_data, b, seed=seed,
                checkpoint_every=max(100, b.steps // 5), device=self.device, checkpoint=ckpt,
                resume=resumed, meta=describe(process, net, train_data), progress=self.progress,
            )  # fmt: skip
        except TrainingError as err:
            self.note(f"{run}: training failed ({err}); its cells are left out")
            return None
        attrs = {
            "dataset": label, "process": p.label, "process_name": p.name,
            "options": process.options_dict(), "teacher": p.teacher, "seed": seed,
            "network": self.suite.network, "network_config": self.suite.network_config,
            "steps": b.steps, "batch_size": b.batch_size, "lr": b.lr, "ema_decay": b.ema_decay,
            "grad_clip": b.grad_clip, "wall_seconds": res.wall_seconds,
            "resumed_from_step": start,
            "final_loss": float(res.losses[-max(1, len(res.losses) // 10) :].mean()),
            "checkpoint": str(ckpt.relative_to(self.out.parent)),
        }  # fmt: skip
        loss = np.asarray(res.losses, np.float32)

        def write(f: Any) -> None:
            g = f.require_group("training").create_group(run)
            store.set_attrs(g, attrs)
            store.put(g, "loss", loss, {})

        store.append(self.out, write)
        self.done = store.read_bench(self.out, samples=False)
        self.result.trained += 1
        return ckpt

    def _reflow_pairs(self, run: str, teacher: Path, seed: int) -> Path:
        """The reflow pairs ``(z, ODE(z))`` of ``teacher`` for ``run`` (Liu et al. 2023),
        generated once (dopri5) and written atomically beside the checkpoints."""
        from physgen.sampling.reflow import PAIRS_STREAM, reflow_dataset

        path = self.ckpt_dir / f"{run}.{self.tag}.pairs.npz"
        if not path.is_file():
            _record(self.ckpt_dir, path)
            reflow_dataset(teacher, self.suite.n_data, seed=derive_seed(seed, PAIRS_STREAM),
                           out_path=path,
                           device=self.device)  # fmt: skip
        return path

    def _sample(
        self, p: ProcessSpec, run: str, label: str, seed: int, ckpt: Path,
        todo: list[tuple[str, int]], reference: torch.Tensor,
    ) -> None:  # fmt: skip
        from physgen.api import load_checkpoint
        from physgen.registry import get_registry
        from physgen.sampling import sample

        model = load_checkpoint(ckpt, device=self.device)
        for sampler, budget in todo:
            spec = get_registry().sampler(sampler)
            grid = _view_grid(model.process, model.ema, spec.view)
            steps, cost = steps_for_budget(spec, grid, budget)
            name = f"{run}.{sampler}.nfe{budget}"
            self.bar.set_postfix_str(name, refresh=False)
            if steps == 0:
                self.note(f"{name}: skipped, one step of {sampler} costs {cost} NFE")
                self.bar.update(1)
                continue
            s = sample(model.process, model.ema, model.event_shape, n=self.suite.n_samples,
                       sampler=sampler, steps=steps, seed=seed, device=self.device)  # fmt: skip
            x = s.x.float().cpu()
            metrics = self._metrics(x, reference, seed)
            attrs = {
                "dataset": label, "process": p.label, "process_name": p.name, "seed": seed,
                "run": run, "sampler": sampler, "nfe_budget": budget, "steps": steps,
                "nfe": s.nfe, "wall_seconds": s.wall_seconds, "options": s.options,
                "nonfinite": int((~torch.isfinite(x.flatten(1))).any(1).sum()),
                **{f"metric.{k}": v for k, v in metrics.items()},
            }  # fmt: skip
            store.append(self.out, _putter("samples", name, x.numpy(), attrs))
            self.result.computed += 1
            self.bar.update(1)


def _putter(
    group: str, name: str, data: np.ndarray, attrs: dict[str, Any]
) -> Callable[[Any], None]:
    return lambda f: store.put(f.require_group(group), name, data, attrs)
