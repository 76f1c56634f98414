"""Post-hoc EMA (Karras et al. 2024, EDM2 §3.1, Appendix C.2): sample quality versus the EMA
length σ_rel, every length rebuilt after training from the snapshots of two tracked profiles.

One EDM run on 2-D moons tracks power-function EMAs of σ_rel 0.05 and 0.10 (snapshots every
``--snapshot-every`` steps) and, held out, 0.15. After training, each σ_rel of the sweep is
rebuilt from the 0.05/0.10 snapshots only (:func:`physgen.training.posthoc_ema`), sampled
with Heun (EDM Algorithm 1) from the same noise, and compared with fresh moons by sliced W2
(:func:`physgen.metrics.sliced_w2`, 8 repeats of the projections averaged). The held-out
0.15 profile checks the reconstruction: its rebuilt weights against the tracked ones, and the
quality of both. The raw weights and the classic EMA (decay 0.999 with warm-up) are the
reference rows; fresh data against fresh data is the floor::

    python benchmarks/posthoc_ema.py --out benchmarks/results/posthoc_ema.h5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_header

from physgen.api import get_network, get_process, load_checkpoint
from physgen.data import load_dataset
from physgen.io import atomic_write
from physgen.metrics import sliced_w2
from physgen.sampling import sample
from physgen.training import ema_for_length, posthoc_ema, train

SWEEP = (0.01, 0.02, 0.03, 0.05, 0.075, 0.10, 0.125, 0.15, 0.2, 0.25, 0.28)
SNAPSHOTTED = (0.05, 0.10)
HELD_OUT = 0.15


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--snapshot-every", type=int, default=50)
    p.add_argument("--n", type=int, default=4000, help="samples per σ_rel")
    p.add_argument("--sample-steps", type=int, default=18)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("runs/posthoc_ema_bench"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/posthoc_ema.h5"))
    return p.parse_args(argv)


def quality(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Sliced W2 to the reference, averaged over 8 seeded draws of the projections."""
    vals = [sliced_w2(x, ref, generator=torch.Generator().manual_seed(k)) for k in range(8)]
    return float(np.mean(vals))


def flat(net: Any) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in net.parameters()])


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    ckpt_path = args.work / "checkpoint.safetensors"
    process = get_process("edm")
    data = load_dataset("moons", 20_000, seed=args.seed)
    net = get_network("mlp", (2,), width=args.width, depth=2, seed=args.seed)
    t0 = time.perf_counter()
    train(process, net, data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
          seed=args.seed, ema_lengths=(*SNAPSHOTTED, HELD_OUT),
          ema_snapshot_every=args.snapshot_every, checkpoint=ckpt_path, overwrite=True,
          progress=False)  # fmt: skip
    train_s = time.perf_counter() - t0
    ckpt = load_checkpoint(ckpt_path)
    ref = load_dataset("moons", args.n, seed=args.seed + 1000).x.float()
    floor = quality(load_dataset("moons", args.n, seed=args.seed + 2000).x.float(), ref)

    def score(model: Any) -> float:
        out = sample(ckpt.process, model, (2,), n=args.n, steps=args.sample_steps,
                     seed=args.seed + 7)  # fmt: skip
        return quality(out.x.float(), ref)

    rows = []
    for s in SWEEP:
        model, info = posthoc_ema(ckpt, s, use=SNAPSHOTTED)
        rows.append({"sigma_rel": s, "source": "posthoc", "sliced_w2": score(model),
                     "snapshots": len(set(info.snapshot_steps))})  # fmt: skip
        print(f"σ_rel {s:.3f} post-hoc: sliced W2 {rows[-1]['sliced_w2']:.4f}", flush=True)
    tracked, _ = ema_for_length(ckpt, HELD_OUT)
    rebuilt, _ = posthoc_ema(ckpt, HELD_OUT, use=SNAPSHOTTED)
    rel_err = float(
        (flat(rebuilt) - flat(tracked)).norm() / (flat(ckpt.net) - flat(tracked)).norm()
    )
    reference = {
        "held_out_tracked": score(tracked),
        "held_out_rebuilt": score(rebuilt),
        "raw_weights": score(ckpt.net),
        "classic_ema_0.999": score(ckpt.ema),
        "data_floor": floor,
    }
    return {"rows": rows, "reference": reference, "held_out_rel_err": rel_err,
            "train_seconds": train_s}  # fmt: skip


def table(out: dict[str, Any]) -> str:
    lines = ["| σ_rel (post-hoc) | sliced W2 |", "|---|---|"]
    lines += [f"| {r['sigma_rel']:.3f} | {r['sliced_w2']:.4f} |" for r in out["rows"]]
    ref = out["reference"]
    lines.append("")
    lines += [f"{k}: {v:.4f}" for k, v in ref.items()]
    lines.append(
        f"held-out σ_rel {HELD_OUT}: rebuilt vs tracked weights, relative error "
        f"{out['held_out_rel_err']:.2e} (of the tracked EMA's distance to the raw weights)"
    )
    return "\n".join(lines)


def write_h5(path: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    import h5py

    def writer(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["benchmark"] = "posthoc_ema"
            write_header(f, args)
            f.attrs["table"] = table(out)
            f.attrs["reference"] = json.dumps(out["reference"])
            f.attrs["held_out_rel_err"] = out["held_out_rel_err"]
            f.attrs["train_seconds"] = out["train_seconds"]
            f.attrs["snapshotted_sigma_rels"] = list(SNAPSHOTTED)
            g = f.create_group("results")
            for c in ("sigma_rel", "sliced_w2", "snapshots"):
                g[c] = np.array([float(r[c]) for r in out["rows"]])

    atomic_write(path, writer)


def plot(path: Path, out: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, ref = out["rows"], out["reference"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    ax.plot([r["sigma_rel"] for r in rows], [r["sliced_w2"] for r in rows], "o-",
            label="post-hoc (from σ_rel 0.05, 0.10 snapshots)")  # fmt: skip
    ax.scatter([HELD_OUT], [ref["held_out_tracked"]], marker="x", s=80, color="C3", zorder=3,
               label=f"tracked σ_rel {HELD_OUT} (held out)")  # fmt: skip
    ax.axhline(ref["raw_weights"], color="C2", ls="--", label="raw weights")
    ax.axhline(ref["classic_ema_0.999"], color="C1", ls="-.", label="classic EMA 0.999")
    ax.axhline(ref["data_floor"], color="0.5", ls=":", label="data vs data")
    ax.set(xlabel="EMA length σ_rel", ylabel="sliced W2 to fresh moons",
           title="EDM on moons: quality vs post-hoc EMA length")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    out = run(args)
    write_h5(args.out, args, out)
    plot(args.out.with_suffix(".png"), out)
    print(table(out))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in "
          f"{time.perf_counter() - start:.0f}s")  # fmt: skip


if __name__ == "__main__":
    main()
