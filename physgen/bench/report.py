"""What a bench file says, for people: a markdown table and PNG plots (matplotlib, Agg).

* ``table.md`` — per dataset, process, sampler and NFE budget: the NFE spent, the steps, each
  metric (mean over seeds, ± standard deviation with several seeds) and the sampling seconds;
  the ``data`` rows are the noise floor (a second fresh draw scored like samples); then each
  model's training steps, final loss and seconds.
* ``quality-<dataset>-<metric>.png`` — the metric against NFE (log scale), one panel per
  process, one line per sampler, the noise floor dashed.
* ``samples-<dataset>.png`` — samples (first seed) over the reference data in grey: one row
  per process (its first sampler), one column per NFE budget; images as 4×4 tiles.
* ``loss-<dataset>.png`` — each model's training loss (first seed, running mean), a panel each.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from physgen.bench.store import BenchFile, Cell, read_bench
from physgen.cli.plots import pyplot, running_mean, save_figure, scatter, tile_images
from physgen.io import atomic_path

__all__ = ["Report", "report"]


@dataclass(frozen=True)
class Report:
    """The table text and the files written."""

    table: str
    files: list[Path]


def report(path: str | Path, out_dir: str | Path | None = None, *, plots: bool = True) -> Report:
    """Write ``table.md`` and the plots of the bench file ``path`` into ``out_dir`` (default:
    the directory named like the file without its suffix); returns the table text."""
    bench = read_bench(path)
    out = Path(out_dir) if out_dir is not None else Path(path).with_suffix("")
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(bench)
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(table + "\n")
    files = [out / "table.md"]
    if plots:
        for dataset in _datasets(bench):
            for metric in bench.config["metrics"]:
                files.append(_quality_plot(bench, dataset, metric, out))
            files.append(_samples_plot(bench, dataset, out))
            files.append(_loss_plot(bench, dataset, out))
    return Report(table, files)


# -- the table -------------------------------------------------------------------------------


def _datasets(bench: BenchFile) -> list[str]:
    return [Path(d).stem for d in bench.config["datasets"]]


def _labels(bench: BenchFile) -> list[tuple[str, list[str]]]:
    return [(p["label"], list(p["samplers"])) for p in bench.config["processes"]]


def _cells(bench: BenchFile, dataset: str, process: str, sampler: str, budget: int) -> list[Cell]:
    return [
        c
        for c in bench.cells.values()
        if (c.attrs["dataset"], c.attrs["process"], c.attrs["sampler"], c.attrs["nfe_budget"])
        == (dataset, process, sampler, budget)
    ]


def _lower_is_better(metric: str) -> bool:
    from physgen.registry import get_registry

    reg = get_registry()
    return metric not in reg.names("metrics") or reg.metric(metric).lower_is_better


def _stat(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{np.mean(values):.4g} ± {np.std(values, ddof=1):.2g}"


def markdown_table(bench: BenchFile) -> str:
    """The cells and trainings of ``bench`` as two markdown tables."""
    metrics = list(bench.config["metrics"])
    arrows = [f"{m} {'↓' if _lower_is_better(m) else '↑'}" for m in metrics]
    head = ["dataset", "process", "sampler", "budget", "NFE", "steps", *arrows, "sample s"]
    rows = []
    for dataset in _datasets(bench):
        floor = [r[1] for k, r in bench.references.items() if r[1]["dataset"] == dataset]
        if floor:
            vals = [_stat([f[f"floor.{m}"] for f in floor if f"floor.{m}" in f]) for m in metrics]
            rows.append([dataset, "data (floor)", "—", "—", "—", "—", *vals, "—"])
        for label, samplers in _labels(bench):
            for sampler in samplers:
                for budget in bench.config["nfe"]:
                    cells = _cells(bench, dataset, label, sampler, budget)
                    if not cells:
                        continue
                    a = cells[0].attrs
                    vals = [_stat([c.metrics[m] for c in cells if m in c.metrics]) for m in metrics]
                    wall = _stat([float(c.attrs["wall_seconds"]) for c in cells])
                    row = [dataset, label, sampler, str(budget), str(a["nfe"]), str(a["steps"])]
                    rows.append([*row, *vals, wall])
    train_head = ["dataset", "process", "teacher", "steps", "final loss", "train s"]
    train_rows = []
    for dataset in _datasets(bench):
        for label, _ in _labels(bench):
            runs = [t for t in bench.training.values()
                    if (t.attrs["dataset"], t.attrs["process"]) == (dataset, label)]  # fmt: skip
            if runs:
                a = runs[0].attrs
                train_rows.append([
                    dataset, label, a.get("teacher") or "—", str(a["steps"]),
                    _stat([float(t.attrs["final_loss"]) for t in runs]),
                    _stat([float(t.attrs["wall_seconds"]) for t in runs]),
                ])  # fmt: skip
    best = _best_rows(bench, metrics[0]) if metrics else []
    best_head = [
        "dataset",
        "process",
        "best cell",
        metrics[0] if metrics else "",
        "× floor",
        "note",
    ]
    tail = "\n\n" + _md(best_head, best) if best else ""
    return _md(head, rows) + "\n\n" + _md(train_head, train_rows) + tail


#: Why a process can sit above the data floor at the default budget, by registered name: one
#: line each, shown beside its best cell when that cell is more than twice the floor.
NOTES = {
    "ddpm": "ε-type output: ODE samplers carry the prior's ~1 % tail, where the net errs ~10×, "
    "times σ in x̂₀, off the data; ancestral forgets it (or sample --clip-denoised)",
    "ct": "consistency training from scratch: 1500 steps are far short of its schedule",
}
NOTES["vp"] = NOTES["ve"] = NOTES["ddpm"]


def _best_rows(bench: BenchFile, metric: str) -> list[list[str]]:
    """Per dataset and process: the best cell on ``metric`` (mean over seeds), its ratio to the
    data floor, and a one-line note (:data:`NOTES`) when the best cell of any of its samplers
    is more than twice the floor."""
    sign = 1 if _lower_is_better(metric) else -1
    names = {p["label"]: p["name"] for p in bench.config["processes"]}
    out = []
    for dataset in _datasets(bench):
        floors = [r[1][f"floor.{metric}"] for r in bench.references.values()
                  if r[1]["dataset"] == dataset and f"floor.{metric}" in r[1]]  # fmt: skip
        floor = float(np.mean(floors)) if floors else math.nan
        for label, samplers in _labels(bench):
            scored = []
            for sampler in samplers:
                for budget in bench.config["nfe"]:
                    cells = _cells(bench, dataset, label, sampler, budget)
                    vals = [c.metrics[metric] for c in cells if metric in c.metrics]
                    if vals:
                        scored.append((sign * float(np.mean(vals)), sampler, cells[0].attrs["nfe"]))
            if not scored:
                continue
            value, sampler, nfe = min(scored)
            ratio = sign * value / floor if floor > 0 else math.nan
            worst = max(min(v for v, s, _ in scored if s == name) for name in samplers
                        if any(s == name for _, s, _ in scored))  # fmt: skip
            note = NOTES.get(names.get(label, label), "—") if sign * worst > 2 * floor else ""
            cell = f"{sampler}, NFE {nfe}"
            out.append([dataset, label, cell, f"{sign * value:.4g}", f"{ratio:.2g}", note])
    return out


def _md(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *map(line, rows)])


# -- plots -----------------------------------------------------------------------------------


def _grid(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def _quality_plot(bench: BenchFile, dataset: str, metric: str, out: Path) -> Path:
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    labels = _labels(bench)
    rows, cols = _grid(len(labels), 4)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), dpi=100,
                             sharex=True, sharey=True, squeeze=False)  # fmt: skip
    floor = [r[1].get(f"floor.{metric}") for r in bench.references.values()
             if r[1]["dataset"] == dataset]  # fmt: skip
    floor_v = [float(f) for f in floor if f is not None]
    values: list[float] = []
    for ax, (label, samplers) in zip(axes.flat, labels, strict=False):
        for i, sampler in enumerate(samplers):
            pts = defaultdict(list)
            for c in bench.cells.values():
                a = c.attrs
                if (a["dataset"], a["process"], a["sampler"]) == (dataset, label, sampler):
                    pts[int(a["nfe"])].append(c.metrics.get(metric, math.nan))
            if pts:
                x = sorted(pts)
                y = [float(np.mean(pts[k])) for k in x]
                values += y
                ax.plot(x, y, marker="os^dv"[i % 5], label=sampler)
        if floor_v:
            ax.axhline(float(np.mean(floor_v)), color="0.5", ls="--", lw=1, label="data floor")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(bench.config["nfe"]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(labels) :]:
        ax.set_visible(False)
    finite = [v for v in values + floor_v if math.isfinite(v)]
    if finite and min(finite) > 0:
        axes[0, 0].set_yscale("log")
    elif finite and max(map(abs, finite)) > 0:  # signed (unbiased MMD): linear within the
        noise = max(abs(v) for v in finite if v <= 0) or 1e-3  # noise its negatives show
        axes[0, 0].set_yscale("symlog", linthresh=10 ** math.ceil(math.log10(noise)))
    for ax in axes[-1]:
        ax.set_xlabel("NFE")
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    better = "lower" if _lower_is_better(metric) else "higher"
    fig.suptitle(f"{metric} vs NFE on {dataset} ({better} is better)", fontsize=11)
    return save_figure(fig, out / f"quality-{dataset}-{metric}.png", suptitle=True)


def _samples_plot(bench: BenchFile, dataset: str, out: Path) -> Path:
    plt = pyplot()
    labels = _labels(bench)
    budgets = list(bench.config["nfe"])
    seed = bench.config["seeds"][0]
    ref = bench.references.get(f"{dataset}.s{seed}")
    fig, axes = plt.subplots(len(labels), len(budgets), dpi=90, squeeze=False,
                             figsize=(1.9 * len(budgets), 1.9 * len(labels)))  # fmt: skip
    lim = _limit(ref[0] if ref is not None else None)
    for r, (label, samplers) in enumerate(labels):
        for c, budget in enumerate(budgets):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            cells = [x for x in _cells(bench, dataset, label, samplers[0], budget)
                     if x.attrs["seed"] == seed]  # fmt: skip
            if cells:
                _draw(ax, cells[0].samples, None if ref is None else ref[0], lim)
                ax.set_title(f"NFE {cells[0].attrs['nfe']}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{label}\n{samplers[0]}", fontsize=8)
    fig.suptitle(f"samples on {dataset} (seed {seed}; grey: held-out data)", fontsize=10)
    return save_figure(fig, out / f"samples-{dataset}.png", suptitle=True)


def _limit(ref: np.ndarray | None) -> float:
    if ref is None or ref.ndim != 2:
        return 3.0
    return float(np.quantile(np.abs(ref[:, :2]), 0.995)) * 1.3


def _draw(ax: Any, x: np.ndarray, ref: np.ndarray | None, lim: float) -> None:
    if x.ndim == 4:  # images [n, C, H, W]: a 4 × 4 tile
        k = min(4, math.isqrt(len(x)))
        ax.imshow(tile_images(x[: k * k], k))
        return
    scatter(ax, x, ref, size=0.5)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")


def _loss_plot(bench: BenchFile, dataset: str, out: Path) -> Path:
    plt = pyplot()
    seed = bench.config["seeds"][0]
    curves = {
        t.attrs["process"]: t.loss
        for t in bench.training.values()
        if t.attrs["dataset"] == dataset and t.attrs["seed"] == seed and len(t.loss)
    }
    order = [label for label, _ in _labels(bench) if label in curves] or ["(none)"]
    rows, cols = _grid(len(order), 4)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), dpi=100,
                             sharex=True, squeeze=False)  # fmt: skip
    for ax, label in zip(axes.flat, order, strict=False):
        steps, smooth = running_mean(curves.get(label, []), 50)
        ax.plot(steps, smooth, color="C0", lw=1)
        if len(smooth) and (smooth > 0).all():
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(order) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle(f"training loss on {dataset} (seed {seed}, running mean)", fontsize=11)
    return save_figure(fig, out / f"loss-{dataset}.png", suptitle=True)
