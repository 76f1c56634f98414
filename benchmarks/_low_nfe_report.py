"""The report of ``benchmarks/low_nfe.py``: markdown tables, the HDF5 file and the plot."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _common import write_header

from physgen.io import atomic_write

#: the statistics the summary compares, the goal's (issue 9: median and rms) first
STATS = ("median", "rms", "q90", "switches")


def best(rows: list[dict[str, Any]], stat: str) -> dict[str, Any]:
    """The row with the smallest ``stat`` (ties: the first)."""
    return min(rows, key=lambda r: r[stat])


def markdown(rows: list[dict[str, Any]], budgets: list[int]) -> tuple[str, str]:
    """One row per (library, method, schedule), one column per budget: ``median · rms ·
    switches`` (NFE used when it differs from the budget); then, per budget and statistic, the
    best physgen run vs the best peer run, and the knots of the best fitted physgen runs."""
    keys = list(dict.fromkeys((r["library"], r["method"], r["schedule"]) for r in rows))
    head = "| library | sampler | schedule | " + " | ".join(f"NFE {b}" for b in budgets) + " |"
    lines = [head, "|" + "---|" * (3 + len(budgets))]
    for key in keys:
        cells = []
        for b in budgets:
            r = next(
                r
                for r in rows
                if (r["library"], r["method"], r["schedule"]) == key and r["budget"] == b
            )
            cell = f"{r['median']:.2e} · {r['rms']:.1e} · {r['switches']}"
            if r["nfe"] != b:
                cell += f" ({r['nfe']})"
            if r["schedule"] == "tuned":
                cell += f" ρ={r['rho']:g}"
            cells.append(cell)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    summary = [
        "| NFE | statistic | best physgen | value | best peer | value | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    fitted = {}
    for b in budgets:
        ours = [r for r in rows if r["budget"] == b and r["library"] == "physgen"]
        theirs = [r for r in rows if r["budget"] == b and r["library"] != "physgen"]
        for stat in STATS:
            mine = best(ours, stat)
            if mine["knots"]:
                fitted[b, mine["method"], mine["schedule"]] = mine
            cell = f"| {b} | {stat} | {mine['method']} {mine['schedule']} | {mine[stat]:.3g}"
            if not theirs:
                summary.append(cell + " | (no peers) | | |")
                continue
            peer = best(theirs, stat)
            ratio = mine[stat] / peer[stat] if peer[stat] else float("nan")
            name = f"{peer['library']} {peer['method']} {peer['schedule']}"
            summary.append(f"{cell} | {name} | {peer[stat]:.3g} | {ratio:.3f} |")
    summary.append("")
    for (b, method, schedule), r in fitted.items():  # reproducible from their knots
        intervals = r["nfe"] + ("afs" in method)
        summary.append(
            f"- NFE {b}, {method} {schedule}: `schedule='knots'`, `knots='{r['knots']}'` "
            f"({intervals} intervals)"
        )
    return "\n".join(lines), "\n".join(summary)


def write(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    peers: dict[str, str],
    table: str,
    summary: str,
    budgets: list[int],
) -> None:
    """``args.out`` (HDF5: command, options, versions, tables, one group per run) and a PNG
    beside it: median and RMS error vs NFE, each method at its best schedule per budget."""
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.parent.mkdir(parents=True, exist_ok=True)

    def writer(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            write_header(f, args, **peers)
            f.attrs["table"] = table
            f.attrs["summary"] = summary
            for i, r in enumerate(rows):
                g = f.create_group(f"runs/{i:04d}")
                for k, v in r.items():
                    g.attrs[k] = v

    atomic_write(args.out, writer)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, stat in zip(axes, ("median", "rms"), strict=True):
        for library, style in (("physgen", "-"), ("k-diffusion", "--"), ("diffusers", ":")):
            mine = [r for r in rows if r["library"] == library]
            for method in dict.fromkeys(r["method"] for r in mine):
                points = [
                    best([r for r in mine if r["method"] == method and r["budget"] == b], stat)
                    for b in budgets
                ]
                ax.loglog(
                    [r["nfe"] for r in points],
                    [r[stat] for r in points],
                    style,
                    marker="o",
                    ms=3,
                    label=f"{library} {method}",
                )
        ax.set_xlabel("NFE")
        what = "median over draws of" if stat == "median" else "RMS over draws of"
        ax.set_ylabel(f"{what} the per-dim RMS error vs dopri5")
    axes[0].set_title(f"GMM d={args.dim}, K={args.components}, std={args.std}")
    axes[1].set_title("best schedule per point (fitted: pilot draws only)")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    atomic_write(args.out.with_suffix(".png"), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
