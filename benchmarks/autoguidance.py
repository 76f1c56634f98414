"""Autoguidance versus classifier-free guidance on class-conditional digits, at matched NFE
(Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself").

One class-conditional EDM run on the built-in 8×8 ``digits`` (by default flattened to 64-d
vectors with the MLP backbone, which a shared 2-core CPU trains in minutes; ``--backbone
unet`` keeps the images; label dropout so that the same network also has the unconditional
model CFG needs) is checkpointed early (the
*bad*, less-trained model: ``--bad-steps``) and continued to ``--steps`` (the *good* model;
the continuation is the resumed run, bitwise the straight one). From the good model, with
the same noise and labels (classes cycling 0–9), Heun (EDM Algorithm 1) draws

* unguided samples at ``--sample-steps`` (NFE 2·steps − 1) and at twice the steps (about the
  NFE of a guided run, so no method gets more network evaluations than another);
* classifier-free guided samples ``D_u + w (D_c − D_u)`` and autoguided samples
  ``D_bad + w (D_good − D_bad)`` for each ``w``: two evaluations per step, counted.

Quality is the Fréchet distance to the digits in the feature space of a classifier trained
by physgen on the digits themselves (:func:`physgen.metrics.featnet.train_features`; scores
are comparable with each other, not with FID elsewhere), and class fidelity is that
classifier's accuracy on the samples' intended labels::

    python benchmarks/autoguidance.py --out benchmarks/results/autoguidance.h5
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from _common import write_header

from physgen.api import get_network, get_process, load_checkpoint
from physgen.data import Dataset, load_dataset
from physgen.io import atomic_write
from physgen.metrics import fd
from physgen.metrics.featnet import FeatureNet, train_features
from physgen.sampling import sample
from physgen.sampling.guidance import check_guide
from physgen.training import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000, help="training steps of the good model")
    p.add_argument("--bad-steps", type=int, default=500, help="training steps of the bad one")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--backbone", choices=("mlp", "unet"), default="mlp")
    p.add_argument("--width", type=int, default=256, help="MLP width")
    p.add_argument("--bad-width", type=int, default=None,
                   help="train the bad model as a separate, narrower MLP of this width for "
                   "--bad-steps (default: the good run's checkpoint at --bad-steps)")  # fmt: skip
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--preset", default="tiny", help="U-Net preset")
    p.add_argument("--channels", type=int, default=16, help="U-Net model_channels")
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--weights", default="1.5,2,3", help="guidance weights w (comma-separated)")
    p.add_argument("--n", type=int, default=1000, help="samples per row")
    p.add_argument("--sample-steps", type=int, default=18)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("runs/autoguidance_bench"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/autoguidance.h5"))
    return p.parse_args(argv)


def digits(args: argparse.Namespace) -> Any:
    """The 1797 built-in digits, as images or flattened to 64-d vectors (``--backbone``)."""
    data = load_dataset("digits", 1797, seed=args.seed)
    if args.backbone == "unet":
        return data
    return Dataset(name="digits", x=data.x.reshape(len(data.x), -1), labels=data.labels,
                   num_classes=data.num_classes, info={"flattened": True})  # fmt: skip


def train_pair(args: argparse.Namespace) -> tuple[Path, Path, float]:
    """The bad (early) and good checkpoints of one run."""
    args.work.mkdir(parents=True, exist_ok=True)
    bad, good = args.work / "bad.safetensors", args.work / "good.safetensors"
    data = digits(args)
    process = get_process("edm")
    net_opts: dict[str, Any] = (
        {"preset": args.preset, "model_channels": args.channels}
        if args.backbone == "unet"
        else {"width": args.width, "depth": 3}
    )

    def net(**over: Any) -> Any:
        return get_network(args.backbone, data.event_shape, data.num_classes, seed=args.seed,
                           **{**net_opts, **over})  # fmt: skip

    common = dict(batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=False,
                  label_dropout=args.label_dropout, checkpoint_every=None)  # fmt: skip
    t0 = time.perf_counter()
    if args.bad_width is not None:  # a smaller network, trained for fewer steps
        train(process, net(width=args.bad_width), data, steps=args.bad_steps, checkpoint=bad,
              overwrite=True, **common)  # fmt: skip
        train(get_process("edm"), net(), data, steps=args.steps, checkpoint=good,
              overwrite=True, **common)  # fmt: skip
        return bad, good, time.perf_counter() - t0
    train(process, net(), data, steps=args.bad_steps, checkpoint=bad, overwrite=True, **common)
    shutil.copyfile(bad, good)
    train(get_process("edm"), net(), data, steps=args.steps, checkpoint=good, resume=True,
          **common)  # fmt: skip
    return bad, good, time.perf_counter() - t0


def classifier(args: argparse.Namespace, data: Any) -> tuple[Any, Any]:
    """The digits classifier's features (for FD) and its logits (for accuracy)."""
    cache = args.work / "featnet"
    feats = train_features(data, seed=args.seed, cache_dir=cache)
    (path,) = sorted(cache.glob("featnet-*.safetensors"))
    net = FeatureNet(tuple(data.x.shape[1:]), 64, data.num_classes)
    net.load_state_dict(safetensors.torch.load_file(str(path)))
    net.eval()

    def logits(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net.head(net(b)) for b in x.split(512)])

    return feats, logits


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    bad_path, good_path, train_s = train_pair(args)
    good, bad = load_checkpoint(good_path), load_checkpoint(bad_path)
    check_guide(good, bad)
    data = digits(args)
    feats, logits = classifier(args, data)
    ref = feats(data.x.float())
    labels = torch.arange(args.n) % data.num_classes
    weights = [float(w) for w in args.weights.split(",")]

    def row(method: str, w: float, steps: int, **kw: Any) -> dict[str, Any]:
        out = sample(good.process, good.ema, good.event_shape, n=args.n, steps=steps,
                     seed=args.seed + 1, cond=labels, guidance=w, **kw)  # fmt: skip
        x = out.x.float().clamp(-1, 1)
        acc = float((logits(x).argmax(1) == labels).float().mean())
        r = {"method": method, "w": w, "steps": steps, "nfe": out.nfe,
             "fd": fd(feats(x), ref), "accuracy": acc}  # fmt: skip
        print(f"{method:14s} w={w:<4g} NFE {out.nfe:3d}: FD {r['fd']:.3f}, accuracy {acc:.3f}",
              flush=True)  # fmt: skip
        return r

    s = args.sample_steps
    rows = [row("unguided", 1.0, s), row("unguided", 1.0, 2 * s)]
    for w in weights:
        rows.append(row("cfg", w, s))
        rows.append(row("autoguidance", w, s, guide=bad.ema))
    bad_row = sample(bad.process, bad.ema, bad.event_shape, n=args.n, steps=s, seed=args.seed + 1,
                     cond=labels)  # fmt: skip
    xb = bad_row.x.float().clamp(-1, 1)
    rows.append({"method": "bad model", "w": 1.0, "steps": s, "nfe": bad_row.nfe,
                 "fd": fd(feats(xb), ref),
                 "accuracy": float((logits(xb).argmax(1) == labels).float().mean())})  # fmt: skip
    data_acc = float((logits(data.x.float()).argmax(1) == data.labels).float().mean())
    return {"rows": rows, "train_seconds": train_s, "feature_space": feats.name,
            "classifier_train_accuracy": data_acc}  # fmt: skip


def table(out: dict[str, Any]) -> str:
    lines = ["| method | w | NFE | FD (featnet) | classifier accuracy |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['w']:g} | {r['nfe']} | {r['fd']:.3f} | {r['accuracy']:.3f} |"
              for r in out["rows"]]  # fmt: skip
    lines.append(f"\nfeature space: {out['feature_space']}; classifier accuracy on the data "
                 f"{out['classifier_train_accuracy']:.3f}")  # fmt: skip
    return "\n".join(lines)


def write_h5(path: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    import h5py

    def writer(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["benchmark"] = "autoguidance"
            write_header(f, args)
            f.attrs["table"] = table(out)
            f.attrs["feature_space"] = out["feature_space"]
            f.attrs["train_seconds"] = out["train_seconds"]
            f.attrs["rows"] = json.dumps(out["rows"])
            g = f.create_group("results")
            g["method"] = np.array([r["method"] for r in out["rows"]], dtype="S")
            for c in ("w", "steps", "nfe", "fd", "accuracy"):
                g[c] = np.array([float(r[c]) for r in out["rows"]])

    atomic_write(path, writer)


def plot(path: Path, out: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, key, label in ((axes[0], "fd", "FD (featnet)"), (axes[1], "accuracy", "accuracy")):
        for method, color in (("cfg", "C0"), ("autoguidance", "C3")):
            mine = [r for r in rows if r["method"] == method]
            ax.plot([r["w"] for r in mine], [r[key] for r in mine], "o-", color=color,
                    label=f"{method} (NFE {mine[0]['nfe']})")  # fmt: skip
        for r, ls in zip([r for r in rows if r["method"] == "unguided"], ("--", ":"), strict=True):
            ax.axhline(r[key], color="0.4", ls=ls, label=f"unguided (NFE {r['nfe']})")
        ax.set(xlabel="guidance weight w", ylabel=label)
        ax.legend(fontsize=8)
    fig.suptitle("class-conditional EDM on digits: autoguidance vs CFG at matched NFE")
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
