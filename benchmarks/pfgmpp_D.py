"""PFGM++ versus its augmented dimension D: sample quality at equal training budget, and
robustness of sampling to a perturbed denoiser.

Xu et al. (2023), "PFGM++", §5 and §6.3: small D widens the spread of training radii (robust to
errors of the learned field) but makes the kernel heavy-tailed (harder to learn, "rigidity");
D → ∞ is EDM. This script measures both sides on small vector data:

1. **Quality.** For each dataset and each D, train the shared MLP backbone with the same seed,
   steps, batch size and learning rate, sample with Heun (EDM Algorithm 1) through
   :func:`physgen.sampling.sample`, and compare with fresh data by sliced W2
   (:func:`physgen.metrics.sliced_w2`) and MMD. Far-out samples (beyond twice the largest
   data norm: the heavy prior tail at small D) are counted separately.
2. **Robustness.** Sample the same trained networks with the denoiser perturbed,
   ``D(x; σ) ← D(x; σ) + α |D(x; σ)| n`` (elementwise, ``n ~ N(0, I)`` fresh per call), for
   each α, and report the same metrics. Two variants: ``all`` perturbs every call; ``path``
   spares the calls at σ = σ_min (the last Heun corrector and the final Euler step, whose
   output *is* the sample; EDM Algorithm 1), so only errors of the field along the trajectory
   are measured — the errors PFGM++ §5
   argues small D absorbs. Under ``all`` every D also pays the same output noise α|x|n.

Everything (table, samples, options, versions) goes into one HDF5 file written atomically,
with a PNG beside it::

    python benchmarks/pfgmpp_D.py --out benchmarks/results/pfgmpp_D.h5
    python benchmarks/pfgmpp_D.py --steps 4000 --seeds 3 --out runs/pfgmpp_D_long.h5
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_header
from physgen_poisson.pfgmpp import PFGMPP
from torch import Tensor, nn

from physgen.core.precond import edm_coefficients
from physgen.data import load_dataset
from physgen.io import atomic_write
from physgen.metrics import mmd_rbf, sliced_w2
from physgen.nets import MLP
from physgen.sampling import sample

#: robustness variants: perturb every denoiser call, or all but the final one at σ_min
VARIANTS = ("all", "path")

#: name -> (registered dataset, its options)
DATASETS: dict[str, tuple[str, dict[str, Any]]] = {
    "8gaussians": ("8gaussians", {}),
    "gmm32": ("gmm", {"dim": 32, "components": 8, "std": 0.2}),
}


class PerturbedDenoiser(nn.Module):
    """Wraps a backbone so that its EDM-preconditioned denoiser becomes
    ``D + α |D| n``: ``F ← F + α |D| n / c_out`` (EDM eq. 7 solved for F), at every σ above
    ``sigma_floor``. Noise comes from its own generator, fresh on every call; ``α = 0`` passes
    ``F`` through unchanged."""

    def __init__(
        self, net: nn.Module, sigma_data: float, alpha: float, seed: int, sigma_floor: float
    ):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data
        self.alpha, self.sigma_floor = alpha, sigma_floor
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x_in: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        out = self.net(x_in, c_noise, class_labels)
        if self.alpha == 0:
            return out
        sigma = (4 * c_noise.double()).exp()  # c_noise = ln σ / 4 (EDM Table 1)
        c = edm_coefficients(sigma.to(out.dtype), self.sigma_data)
        x = x_in / c.c_in[:, None]
        denoised = c.c_skip[:, None] * x + c.c_out[:, None] * out
        n = torch.randn(out.shape, generator=self.generator, dtype=out.dtype).to(out.device)
        on = (sigma > self.sigma_floor).to(out.dtype)[:, None]
        kick = on * self.alpha * denoised.abs() * n
        return out + kick / c.c_out[:, None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/pfgmpp_D.h5"))
    p.add_argument(
        "--datasets", default="8gaussians,gmm32", help="comma list of: " + ", ".join(DATASETS)
    )
    p.add_argument("--D", default="1,4,16,128,2048,inf", help="augmented dimensions (inf = EDM)")
    p.add_argument("--alphas", default="0,0.1,0.2,0.4", help="relative denoiser noise levels")
    p.add_argument("--steps", type=int, default=1500, help="training steps per model")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=128, help="MLP width")
    p.add_argument("--depth", type=int, default=3, help="MLP residual blocks")
    p.add_argument("--n-train", type=int, default=20_000, help="training examples")
    p.add_argument("--n-samples", type=int, default=2000, help="samples per model and α")
    p.add_argument("--sampler-steps", type=int, default=18, help="Heun grid steps (NFE 2n−1)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per (dataset, D)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return p.parse_args(argv)


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def metrics(x: Tensor, ref: Tensor, far_radius: float) -> dict[str, float]:
    x, ref = x.double(), ref.double()
    finite = torch.isfinite(x).all(1)
    near = finite & (x.norm(dim=1) <= far_radius)
    return {
        "sliced_w2": sliced_w2(x[finite], ref) if finite.any() else math.inf,
        "sliced_w2_near": sliced_w2(x[near], ref) if near.sum() > 1 else math.inf,
        "mmd": mmd_rbf(x[finite][:1000], ref[:1000]) if finite.sum() > 1 else math.inf,
        "far_fraction": float(1 - near.double().mean()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from physgen.training import train

    torch.set_num_threads(args.threads)
    Ds, alphas = floats(args.D), floats(args.alphas)
    rows: list[dict[str, Any]] = []
    samples: dict[str, np.ndarray] = {}
    fresh: dict[str, np.ndarray] = {}
    for name in args.datasets.split(","):
        registered, opts = DATASETS[name]
        data = load_dataset(registered, args.n_train, seed=0, **opts)
        ref = load_dataset(registered, args.n_samples, seed=1, **opts).x
        ref2 = load_dataset(registered, args.n_samples, seed=2, **opts).x
        fresh[name] = ref.numpy()
        far_radius = 2 * float(ref.norm(dim=1).max())
        sigma_data = float(data.x.std())
        floor = metrics(ref2, ref, far_radius)
        rows.append(dict(dataset=name, D=math.nan, alpha=0.0, seed=-1, kind="data", **floor))
        print(
            f"[{name}] N={data.x.shape[1]} sigma_data={sigma_data:.3f} "
            f"data-vs-data sliced W2 {floor['sliced_w2']:.4f}",
            flush=True,
        )
        for D in Ds:
            process = PFGMPP(D=D, sigma_data=sigma_data)
            prior = process.denoiser(nn.Identity()).prior
            x0 = prior(
                (args.n_samples, data.x.shape[1]), generator=torch.Generator().manual_seed(0)
            )
            rows.append(
                dict(
                    dataset=name,
                    D=D,
                    alpha=0.0,
                    seed=-1,
                    kind="prior",
                    **metrics(x0, ref, far_radius),
                )
            )
            for seed in range(args.seeds):
                torch.manual_seed(seed)  # the MLP's initialisation: the same for every D
                net = MLP(data.x.shape[1], width=args.width, depth=args.depth)
                t0 = time.perf_counter()
                result = train(
                    process,
                    net,
                    data,
                    steps=args.steps,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    seed=seed,
                    progress=False,
                )
                train_s = time.perf_counter() - t0
                # median: at small D the heavy-tailed kernel makes the mean loss jumpy
                final_loss = float(np.median(np.asarray(result.losses)[-100:]))
                for variant, alpha in [(v, a) for v in VARIANTS for a in alphas]:
                    if alpha == 0 and variant != VARIANTS[0]:
                        continue  # α = 0 is the same run in every variant
                    floor_sigma = 0.0 if variant == "all" else 1.01 * process.options.sigma_min
                    wrapped = PerturbedDenoiser(
                        result.ema, sigma_data, alpha, 1000 + seed, floor_sigma
                    )
                    s = sample(
                        process,
                        wrapped,
                        (data.x.shape[1],),
                        n=args.n_samples,
                        sampler="heun",
                        steps=args.sampler_steps,
                        seed=seed,
                    )
                    m = metrics(s.x, ref, far_radius)
                    for v in VARIANTS if alpha == 0 else [variant]:
                        rows.append(
                            dict(
                                dataset=name,
                                D=D,
                                alpha=alpha,
                                seed=seed,
                                kind="model",
                                variant=v,
                                nfe=s.nfe,
                                train_seconds=train_s,
                                final_loss=final_loss,
                                **m,
                            )
                        )
                    samples[f"{name}/D={D:g}/{variant}/alpha={alpha:g}/seed={seed}"] = s.x.numpy()
                    print(
                        f"[{name}] D={D:<6g} {variant:<4} α={alpha:<4g} seed={seed} "
                        f"W2 {m['sliced_w2']:.4f} W2(near) {m['sliced_w2_near']:.4f} "
                        f"MMD {m['mmd']:.5f} far {m['far_fraction']:.3f} "
                        f"(train {train_s:.0f}s, loss {final_loss:.3f})",
                        flush=True,
                    )
    return {"rows": rows, "samples": samples, "fresh": fresh}


def select(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def mean_of(rows: list[dict[str, Any]], key: str, **match: Any) -> float:
    return float(np.mean([r[key] for r in select(rows, kind="model", **match)]))


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per (dataset, D); the mean over seeds of sliced W2 (all samples, and
    without far samples), the far fraction and MMD at α = 0, then W2 without far samples per α
    for both perturbation variants."""
    models = select(rows, kind="model")
    alphas = sorted({r["alpha"] for r in models} - {0.0})
    head = ["dataset", "D", "W2", "W2 near", "far", "MMD"]
    head += [f"{v} α={a:g}" for v in VARIANTS for a in alphas]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(r["dataset"] for r in models):
        for D in dict.fromkeys(r["D"] for r in select(models, dataset=name)):
            at = dict(dataset=name, D=D)
            cells = [name, f"{D:g}"]
            cells += [
                f"{mean_of(rows, k, alpha=0.0, variant=VARIANTS[0], **at):.4f}"
                for k in ("sliced_w2", "sliced_w2_near", "far_fraction", "mmd")
            ]
            cells += [
                f"{mean_of(rows, 'sliced_w2_near', alpha=a, variant=v, **at):.4f}"
                for v in VARIANTS
                for a in alphas
            ]
            lines.append("| " + " | ".join(cells) + " |")
    floors = [f"{r['dataset']}: {r['sliced_w2']:.4f}" for r in select(rows, kind="data")]
    lines.append(f"\nfresh data vs fresh data, sliced W2: {', '.join(floors)}")
    return "\n".join(lines)


def write_h5(path: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    import h5py

    rows = out["rows"]
    cols = ["sliced_w2", "sliced_w2_near", "mmd", "far_fraction", "D", "alpha", "seed"]
    extra = ["nfe", "train_seconds", "final_loss"]

    packed: dict[str, Any] = {"compression": "gzip", "shuffle": True}

    def writer(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["benchmark"] = "pfgmpp_D"
            write_header(f, args)
            f.attrs["process_options"] = json.dumps(
                {f"D={D:g}": PFGMPP(D=D).options_dict() for D in floats(args.D)}
            )
            f.attrs["perturbation"] = "D(x; σ) ← D + α |D| n per call, n ~ N(0, I) elementwise"
            f.attrs["table"] = table(rows)
            g = f.create_group("results")
            for c in ("dataset", "kind", "variant"):
                g[c] = np.array([r.get(c, "") for r in rows], dtype="S")
            for c in cols + extra:
                g[c] = np.array([float(r.get(c, math.nan)) for r in rows])
            for name, x in out["fresh"].items():
                f.create_dataset(f"fresh/{name}", data=x, **packed)
            for key, x in out["samples"].items():
                f.create_dataset(f"samples/{key}", data=x, **packed)

    atomic_write(path, writer)


def plot(path: Path, out: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out["rows"]
    models = select(rows, kind="model")
    names = list(dict.fromkeys(r["dataset"] for r in models))
    Ds = list(dict.fromkeys(r["D"] for r in models))
    alphas = sorted({r["alpha"] for r in models})
    ticks = range(len(Ds))  # inf gets its own tick at the end
    flat = [n for n in names if out["fresh"][n].shape[1] == 2]
    nrows = len(names) + len(flat)
    fig, axes = plt.subplots(nrows, 2, figsize=(11, 3.6 * nrows), dpi=100, squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i, 0]
        for key, label in (("sliced_w2", "all samples"), ("sliced_w2_near", "far samples dropped")):
            ys = [mean_of(rows, key, dataset=name, D=D, alpha=0.0, variant="all") for D in Ds]
            ax.plot(ticks, ys, "o-", label=label)
        ax.axhline(
            select(rows, kind="data", dataset=name)[0]["sliced_w2"],
            color="0.5",
            ls=":",
            label="data vs data",
        )
        ax.set(
            xticks=ticks,
            xticklabels=[f"{D:g}" for D in Ds],
            xlabel="D",
            yscale="log",
            ylabel="sliced W2 to fresh data",
            title=f"{name}: quality at equal budget",
        )
        ax.legend(fontsize=7)
        ax = axes[i, 1]
        for j, D in enumerate(Ds):
            for v, style in zip(VARIANTS, ("--", "-"), strict=True):
                ys = [
                    mean_of(rows, "sliced_w2_near", dataset=name, D=D, alpha=a, variant=v)
                    for a in alphas
                ]
                ax.plot(
                    alphas,
                    ys,
                    style,
                    marker="o",
                    color=f"C{j}",
                    label=f"D={D:g}" if v == "path" else None,
                )
        ax.set(
            xlabel="α (relative denoiser noise)",
            ylabel="sliced W2, far samples dropped",
            title=f"{name}: robustness (solid: path, dashed: all)",
        )
        ax.legend(fontsize=7)
    for i, name in enumerate(flat, start=len(names)):
        ref = out["fresh"][name]
        for ax, D in zip(axes[i], (Ds[0], Ds[-1]), strict=True):  # smallest and largest D
            x = out["samples"][f"{name}/D={D:g}/all/alpha=0/seed=0"]
            ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.75", rasterized=True, label="data")
            ax.scatter(x[:, 0], x[:, 1], s=1, c="C0", rasterized=True, label="samples")
            ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", title=f"{name}, D={D:g}, α=0")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
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
