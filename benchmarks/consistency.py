"""Consistency models against their teachers: 1- and 2-step sample quality at equal budget.

Song et al. (2023), "Consistency Models"; Song & Dhariwal (2024), "iCT". On one 2-D dataset,
with one backbone (the shared MLP), one optimiser setting and one seed:

1. **Teachers.** Train every available ODE process with a denoiser view (``edm``, ``pfgmpp``,
   ``cfm``) and measure its samples at its own NFE (Heun, EDM Algorithm 1, 18 steps: NFE 35)
   and at the consistency models' budget (Euler with 1 and 2 steps: NFE 1 and 2).
2. **Students.** CD from each teacher (Heun teacher step, N = 18), CT (the paper's s1 = 150,
   and a smaller s1 that suits a short budget) and iCT from scratch, each trained for the same
   number of steps; sampled in one step and in two steps (τ_2 = ``sigma_mid``), plus a sweep
   of τ_2 for two-step sampling.

Every model is sampled from the trainer's EMA with decay 0.99 (a 100-step horizon): at 2000
steps the usual 0.999 averages over half the run, and a consistency function still moving
at mid σ is then badly lagged (measured on CD from EDM: RMS of f − teacher ODE at σ = 0.82 was
0.40 with the 0.999 EMA against 0.10 for the raw weights).

Quality is the sliced W2 (:func:`physgen.metrics.sliced_w2`) to fresh data; "data vs data" is
the floor at this sample size. Everything goes into one HDF5 file written atomically, with a
PNG beside it::

    python benchmarks/consistency.py --out benchmarks/results/consistency.h5
    python benchmarks/consistency.py --steps 6000 --teacher-steps 6000 --out runs/cm_long.h5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_header
from physgen_consistency.ct import CT, ICT
from physgen_consistency.distillation import CD

from physgen.api import get_process
from physgen.data import load_dataset
from physgen.io import atomic_write
from physgen.metrics import sliced_w2
from physgen.nets import MLP
from physgen.registry import get_registry
from physgen.sampling import sample
from physgen.training import train

#: teacher name -> its options (σ_d = 1: every built-in dataset has unit mean squared coordinate)
TEACHERS: dict[str, dict[str, Any]] = {
    "edm": {"sigma_data": 1.0},
    "pfgmpp": {"sigma_data": 1.0},
    "cfm": {},
}
#: the ``kind`` of a student's own rows (its τ_2 sweep rows are ``<kind>_tau``)
STUDENT_KINDS = ("cd", "ct", "ict")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/consistency.h5"))
    p.add_argument("--dataset", default="moons", help="a registered 2-D dataset")
    p.add_argument("--teachers", default="edm,pfgmpp,cfm", help="comma list of teachers")
    p.add_argument("--teacher-steps", type=int, default=2000, help="training steps per teacher")
    p.add_argument("--steps", type=int, default=2000, help="training steps per consistency model")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--ema-decay",
        type=float,
        default=0.99,
        help="trainer EMA of every model (0.99: a 100-step horizon, 5%% of the default budget)",
    )
    p.add_argument("--width", type=int, default=128, help="MLP width")
    p.add_argument("--depth", type=int, default=3, help="MLP residual blocks")
    p.add_argument("--n-train", type=int, default=20_000, help="training examples")
    p.add_argument("--n-samples", type=int, default=4000, help="samples per model and sampler")
    p.add_argument("--sigma-mid", type=float, default=0.821, help="τ_2 of two-step sampling")
    p.add_argument("--taus", default="0.2,0.4,0.821,1.6,3.2", help="τ_2 sweep (two-step)")
    p.add_argument("--ct-s1", default="150,20", help="CT's final N (s1): paper's 150, and less")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return p.parse_args(argv)


def train_model(process: Any, data: Any, steps: int, args: argparse.Namespace) -> tuple[Any, Any]:
    """Train a fresh MLP; returns (EMA network, TrainResult)."""
    torch.manual_seed(args.seed)  # the MLP's initial weights (a script may touch the global RNG)
    net = MLP(2, width=args.width, depth=args.depth)
    result = train(
        process,
        net,
        data,
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        ema_decay=args.ema_decay,
        seed=args.seed,
        progress=False,
        checkpoint_every=None,
    )
    return result.ema, result


def with_sigma_mid(process: Any, tau: float) -> Any:
    """The same consistency process sampled with ``τ_2 = tau`` (sampling reads only options)."""
    return type(process)(dataclasses.replace(process.options, sigma_mid=tau))


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.n_train, seed=args.seed)
    if data.event_shape != (2,):
        raise SystemExit(f"--dataset must be 2-D, {args.dataset} is {data.event_shape}")
    ref = load_dataset(args.dataset, args.n_samples, seed=args.seed + 1).x
    floor = load_dataset(args.dataset, args.n_samples, seed=args.seed + 2).x
    rows: list[dict[str, Any]] = [
        {
            "model": "data",
            "kind": "data",
            "sampler": "-",
            "steps": 0,
            "nfe": 0,
            "sliced_w2": sliced_w2(floor, ref),
            "train_seconds": 0.0,
            "tau": math.nan,
        },
    ]
    samples: dict[str, np.ndarray] = {"data/fresh": ref.numpy()}
    known = set(get_registry().names("processes"))

    def measure(
        model: str,
        kind: str,
        process: Any,
        net: Any,
        sampler: str,
        steps: int,
        train_s: float,
        tau: float = math.nan,
        keep: bool = True,
    ) -> None:
        out = sample(
            process, net, (2,), n=args.n_samples, sampler=sampler, steps=steps, seed=args.seed
        )
        w2 = sliced_w2(out.x, ref) if torch.isfinite(out.x).all() else math.inf
        rows.append(
            {
                "model": model,
                "kind": kind,
                "sampler": sampler,
                "steps": steps,
                "nfe": out.nfe,
                "sliced_w2": w2,
                "train_seconds": train_s,
                "tau": tau,
            }
        )
        if keep:
            samples[f"{model}/{sampler}_{steps}"] = out.x.numpy()
        print(
            f"  {model:12s} {sampler:11s} steps={steps:2d} nfe={out.nfe:2d} W2={w2:.4f}", flush=True
        )

    def students(model: str, kind: str, process: Any, net: Any, train_s: float) -> None:
        measure(model, kind, process, net, "consistency", 1, train_s)
        measure(model, kind, process, net, "consistency", 2, train_s, tau=args.sigma_mid)
        for tau in [float(t) for t in args.taus.split(",") if t.strip()]:
            if tau != args.sigma_mid:
                measure(
                    model,
                    kind + "_tau",
                    with_sigma_mid(process, tau),
                    net,
                    "consistency",
                    2,
                    train_s,
                    tau=tau,
                    keep=False,
                )

    common = {"sigma_data": 1.0, "sigma_mid": args.sigma_mid}
    for name in [t for t in args.teachers.split(",") if t.strip()]:
        if name not in known:
            print(f"teacher {name}: not installed, skipped", flush=True)
            continue
        t_process = get_process(name, **TEACHERS.get(name, {}))
        t_net, t_run = train_model(t_process, data, args.teacher_steps, args)
        print(f"teacher {name}: trained in {t_run.wall_seconds:.0f}s", flush=True)
        for sampler, steps in (("heun", 18), ("euler", 1), ("euler", 2)):
            measure(name, "teacher", t_process, t_net, sampler, steps, t_run.wall_seconds)
        cd = CD(**common)
        cd.set_teacher(t_process, t_net)
        s_net, s_run = train_model(cd, data, args.steps, args)
        print(f"cd from {name}: trained in {s_run.wall_seconds:.0f}s", flush=True)
        students(f"cd_{name}", "cd", cd, s_net, s_run.wall_seconds)
    from_scratch: list[tuple[str, str, Any]] = [
        ("ct" if s1 == 150 else f"ct_s1_{s1}", "ct", CT(total_steps=args.steps, s1=s1, **common))
        for s1 in [int(v) for v in args.ct_s1.split(",") if v.strip()]
    ]
    from_scratch.append(("ict", "ict", ICT(total_steps=args.steps, **common)))
    for name, kind, process in from_scratch:
        net, result = train_model(process, data, args.steps, args)
        print(f"{name}: trained in {result.wall_seconds:.0f}s", flush=True)
        students(name, kind, process, net, result.wall_seconds)
    return {"rows": rows, "samples": samples}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per model; teachers at NFE 35, 1, 2; students at 1 and 2 steps."""
    lines = [
        "| model | 1 step (NFE 1) | 2 steps (NFE 2) | best τ_2 (2 steps) | Heun 18 (NFE 35) | "
        "train s |",
        "|---|---|---|---|---|---|",
    ]
    models = list(dict.fromkeys(r["model"] for r in rows if r["kind"] != "data"))
    for m in models:
        mine = [r for r in rows if r["model"] == m]

        def w2(sampler: str, steps: int, mine: list[dict[str, Any]] = mine) -> str:
            hit = [r for r in mine if (r["sampler"], r["steps"]) == (sampler, steps)]
            return f"{hit[0]['sliced_w2']:.4f}" if hit else "–"

        teacher = mine[0]["kind"] == "teacher"
        one, two = (
            (w2("euler", 1), w2("euler", 2))
            if teacher
            else (w2("consistency", 1), w2("consistency", 2))
        )
        sweep = [r for r in mine if r["sampler"] == "consistency" and r["steps"] == 2]
        best = min(sweep, key=lambda r: r["sliced_w2"]) if sweep else None
        best_s = f"{best['sliced_w2']:.4f} (τ={best['tau']:g})" if best else "–"
        lines.append(
            f"| {m}{' (Euler)' if teacher else ''} | {one} | {two} | {best_s} | "
            f"{w2('heun', 18)} | {mine[0]['train_seconds']:.0f} |"
        )
    floor = next(r for r in rows if r["kind"] == "data")["sliced_w2"]
    lines.append(f"\nfresh data vs fresh data, sliced W2: {floor:.4f}")
    return "\n".join(lines)


def write_h5(path: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    import h5py

    rows = out["rows"]

    def writer(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["benchmark"] = "consistency"
            write_header(f, args)
            f.attrs["process_options"] = json.dumps(
                {
                    "cd": CD(sigma_data=1.0, sigma_mid=args.sigma_mid).options_dict(),
                    "ct": CT(sigma_data=1.0, total_steps=args.steps).options_dict(),
                    "ict": ICT(sigma_data=1.0, total_steps=args.steps).options_dict(),
                    **{
                        n: get_process(n, **o).options_dict()
                        for n, o in TEACHERS.items()
                        if n in get_registry().names("processes")
                    },
                }
            )
            f.attrs["table"] = table(rows)
            g = f.create_group("results")
            for c in ("model", "kind", "sampler"):
                g[c] = np.array([r[c] for r in rows], dtype="S")
            for c in ("steps", "nfe", "sliced_w2", "train_seconds", "tau"):
                g[c] = np.array([float(r[c]) for r in rows])
            for key, x in out["samples"].items():
                f.create_dataset(f"samples/{key}", data=x.astype(np.float32), compression="gzip")

    atomic_write(path, writer)


def plot(path: Path, out: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, samples = out["rows"], out["samples"]
    floor = next(r for r in rows if r["kind"] == "data")["sliced_w2"]
    students = list(dict.fromkeys(r["model"] for r in rows if r["kind"] in STUDENT_KINDS))
    fig = plt.figure(figsize=(4 * max(3, len(students)), 8.4), dpi=100)
    grid = fig.add_gridspec(2, max(3, len(students)))
    ax = fig.add_subplot(grid[0, :])
    for i, m in enumerate(students):
        for r in rows:
            if r["model"] == m and r["kind"] in STUDENT_KINDS:  # τ_2 sweep rows left out
                ax.scatter(
                    i,
                    r["sliced_w2"],
                    marker="o" if r["steps"] == 1 else "s",
                    color=f"C{r['steps'] - 1}",
                    zorder=3,
                    label=f"student, {r['steps']} step(s)" if i == 0 else None,
                )
        teacher = m[3:] if m.startswith("cd_") else None
        for sampler, steps, color in (("heun", 18, "C2"), ("euler", 2, "C3")):
            for r in rows:
                if r["model"] == teacher and (r["sampler"], r["steps"]) == (sampler, steps):
                    ax.scatter(
                        i,
                        r["sliced_w2"],
                        marker="_",
                        s=500,
                        color=color,
                        zorder=2,
                        label=f"teacher, {sampler} NFE {r['nfe']}" if i == 0 else None,
                    )
    ax.axhline(floor, color="0.5", ls=":", label="data vs data")
    ax.set(
        xticks=range(len(students)),
        xticklabels=students,
        yscale="log",
        ylabel="sliced W2 to fresh data",
        title="consistency models vs teachers",
    )
    ax.legend(fontsize=8, ncol=3)
    ref = samples["data/fresh"]
    for i, m in enumerate(students):
        a = fig.add_subplot(grid[1, i])
        x = samples.get(f"{m}/consistency_1")
        a.scatter(ref[:, 0], ref[:, 1], s=1, c="0.75", rasterized=True)
        if x is not None:
            a.scatter(x[:, 0], x[:, 1], s=1, c="C0", rasterized=True)
        a.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", title=f"{m}, 1 step")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    out = run(args)
    write_h5(args.out, args, out)
    plot(args.out.with_suffix(".png"), out)
    print(table(out["rows"]))
    print(
        f"wrote {args.out} and {args.out.with_suffix('.png')} in {time.perf_counter() - start:.0f}s"
    )


if __name__ == "__main__":
    main()
