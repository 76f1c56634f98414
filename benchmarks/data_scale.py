"""Data at scale: start-up time, peak memory and loader throughput of the streamed data layer
on synthetic 32×32 RGB uint8 datasets of 10k, 100k and 1M images.

Formats: a memory-mapped ``.npy`` and an HDF5 file for every size, a folder of PNG files for
10k and 100k (a 1M-file folder is not built: ~3.3 GB in a million inodes and, at ~0.2 ms per
PNG write, minutes of build time on the 2-core development machine; the per-image cost of a
folder is measured at 100k). Pixels are uniform noise, the worst case for PNG (incompressible).

Every case runs in a fresh subprocess (peak RSS is per process): it opens the dataset
(:func:`physgen.data.lazy.open_rows`), builds a :class:`physgen.data.loader.LoaderSource`
(batch 256, random flips) and reads ``--batches`` batches. Reported: start-up (open + first
batch, including worker start), images/s over the remaining batches, the peak RSS of the main
process and of the largest worker, each minus the RSS of the process after ``import torch``
(the interpreter and torch are not the data). The goal: peak RSS at 1M within ~300 MB of 10k.

``--train``: training steps/s of the tiny U-Net on small data, streamed (from a ``.npy``
file, one worker) vs in memory (:func:`physgen.train` on the eager dataset), alternating.
``--recipe-steps N``: torchcfm's 2-D recipe (OT-CFM, 8 gaussians → moons, batch 256) with
fresh batches each step, ``physgen.train`` vs a hand-written loop (and the fixed pool).

    python benchmarks/data_scale.py --root /tmp/physgen_data_scale \
        --out benchmarks/results/data_scale.h5
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SIZES = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000}
PNG_SIZES = ("10k", "100k")
SHAPE = (3, 32, 32)
CHUNK = 50_000


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- building the datasets -------------------------------------------------------------------


def _chunks(n: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        yield start, rng.integers(0, 256, (min(CHUNK, n - start), *SHAPE), dtype=np.uint8)


def build(root: Path) -> dict[str, Path]:
    """Every dataset under ``root`` (kept between runs: built once)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for label, n in SIZES.items():
        npy, h5 = root / f"u8_{label}.npy", root / f"u8_{label}.h5"
        if not npy.exists():
            tmp = npy.with_suffix(".part.npy")
            mm = np.lib.format.open_memmap(tmp, "w+", np.uint8, (n, *SHAPE))
            for start, block in _chunks(n, 0):
                mm[start : start + len(block)] = block
            mm.flush()
            del mm
            tmp.rename(npy)
        if not h5.exists():
            tmp = h5.with_suffix(".part.h5")
            with h5py.File(tmp, "w") as f:
                ds = f.create_dataset("x", (n, *SHAPE), np.uint8)
                for start, block in _chunks(n, 0):
                    ds[start : start + len(block)] = block
            tmp.rename(h5)
        paths[f"npy_{label}"], paths[f"h5_{label}"] = npy, h5
        if label in PNG_SIZES:
            folder = root / f"png_{label}"
            if not (folder / "done").exists():
                folder.mkdir(exist_ok=True)
                for start, block in _chunks(n, 0):
                    for i, img in enumerate(block):
                        Image.fromarray(img.transpose(1, 2, 0)).save(
                            folder / f"{start + i:07d}.png", compress_level=1
                        )
                (folder / "done").touch()  # a marker: not an image, ignored by the reader
            paths[f"png_{label}"] = folder
        print(f"built {label}", flush=True)
    return paths


# -- one case, in its own process ------------------------------------------------------------


def child(path: str, workers: int, batches: int, batch_size: int) -> dict[str, float]:
    import torch

    from physgen.data.lazy import open_rows
    from physgen.data.loader import LoaderSource

    torch.set_num_threads(1)
    base = _rss_mb()
    start = time.perf_counter()
    source = LoaderSource(open_rows(path), batch_size, seed=0, workers=workers, flip=True)
    source.batch(0)
    startup = time.perf_counter() - start
    t0 = time.perf_counter()
    for k in range(1, batches):
        source.batch(k)
    rate = (batches - 1) * batch_size / (time.perf_counter() - t0)
    source.close()
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "startup_s": startup,
        "images_per_s": rate,
        "peak_rss_mb": self_peak - base,
        "worker_peak_rss_mb": (workers_peak - base) if workers else 0.0,
        "base_rss_mb": base,
    }


def run_case(path: Path, workers: int, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", str(path), "--workers", str(workers),
           "--batches", str(args.batches), "--batch-size", str(args.batch_size)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# -- training: streamed vs in memory ---------------------------------------------------------


def train_rates(root: Path, steps: int, repeats: int) -> dict[str, list[float]]:
    """Steps/s of the tiny U-Net, EDM, batch 32 on 2k 3×16×16 uint8 images: in memory
    (``load_dataset``: float32 on the device) vs streamed (:class:`Streamed`, one worker)."""
    import tempfile

    import torch

    import physgen
    from physgen.data.loader import Streamed

    torch.set_num_threads(1)  # one thread per process: the worker gets the other core
    npy = root / "u8_train2k_16.npy"
    if not npy.exists():
        np.save(npy, np.random.default_rng(1).integers(0, 256, (2000, 3, 16, 16), np.uint8))
    rates: dict[str, list[float]] = {"memory": [], "stream": []}
    for r in range(repeats):
        for mode in ("memory", "stream") if r % 2 == 0 else ("stream", "memory"):
            process = physgen.get_process("edm")
            net = physgen.get_network("unet", (3, 16, 16), preset="tiny", seed=0)
            data: Any = (
                Streamed(str(npy)) if mode == "stream" else physgen.load_dataset(str(npy), 2000)
            )
            kw: dict[str, Any] = {"workers": 1} if mode == "stream" else {}
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                physgen.train(process, net, data, steps=steps, batch_size=32, progress=False,
                              checkpoint=Path(tmp) / "c.safetensors", checkpoint_every=None,
                              **kw)  # fmt: skip
                rates[mode].append(steps / (time.perf_counter() - t0))
            print(f"repeat {r} {mode:7s} {rates[mode][-1]:6.2f} steps/s", flush=True)
    return rates


# -- torchcfm's 2-D recipe: fresh batches each step ------------------------------------------


def recipe(steps: int, batch_size: int = 256) -> dict[str, np.ndarray]:
    """OT-CFM, 8 gaussians → moons, batch 256 (Tong et al. 2024 §5.1, torchcfm's tutorial):
    loss curves of ``physgen.train`` on the fresh-draw stream, of a hand-written loop drawing
    fresh moons by hand each step (same process, net, Adam, clipping), and of ``physgen.train``
    on a fixed pool of 20k moons (the in-memory path)."""
    import torch

    import physgen
    from physgen.core.rng import derive_seed
    from physgen.data.loader import Streamed

    def setup() -> tuple[Any, Any]:
        process = physgen.get_process("otcfm", source="8gaussians")
        return process, physgen.get_network("mlp", (2,), seed=0)

    curves: dict[str, np.ndarray] = {}
    kw: dict[str, Any] = dict(steps=steps, batch_size=batch_size, progress=False, seed=0)
    process, net = setup()
    curves["physgen_stream"] = physgen.train(process, net, Streamed("moons"), **kw).losses
    process, net = setup()
    pool = physgen.load_dataset("moons", 20_000, seed=0)
    curves["physgen_pool20k"] = physgen.train(process, net, pool, **kw).losses
    process, net = setup()  # the hand-written loop
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)  # TrainConfig's default lr
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):
        x1 = physgen.load_dataset("moons", batch_size, seed=derive_seed(7, step)).x
        loss = process.loss(net, x1, step=step, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    curves["hand_fresh"] = np.asarray(losses, np.float32)
    tail = min(1000, steps // 4)
    for name, c in curves.items():
        t = c[-tail:]
        print(f"{name:16s} final loss (mean of last {tail}) {t.mean():.4f} "
              f"± {t.std() / np.sqrt(tail):.4f}", flush=True)  # fmt: skip
    return curves


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/physgen_data_scale", help="where datasets are built")
    ap.add_argument("--out", default="benchmarks/results/data_scale.h5")
    ap.add_argument("--batches", type=int, default=40, help="batches read per case")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--train", action="store_true", help="time training only (tiny U-Net)")
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recipe-steps", type=int, default=0, help="run the 2-D recipe only")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.workers[0], args.batches, args.batch_size)))
        return
    if args.train:
        rates = train_rates(Path(args.root), args.train_steps, args.repeats)
        write(Path(args.out).with_name("data_scale_train.h5"), args, {}, rates)
        return
    if args.recipe_steps:
        curves = recipe(args.recipe_steps)
        out = Path(args.out).with_name("data_stream_recipe.h5")
        from physgen.io import RunWriter

        with RunWriter(out, config=vars(args), seed=0, device="cpu", overwrite=True) as run:
            for name, c in curves.items():
                run.add_curve(name, c)
                run.add_metric(f"{name}_final_loss", float(c[-min(1000, len(c) // 4) :].mean()))
        return
    paths = build(Path(args.root))
    results: dict[str, dict[str, float]] = {}
    print(f"{'case':12s} {'workers':>7s} {'start-up s':>10s} {'images/s':>9s} "
          f"{'peak RSS MB':>11s} {'worker MB':>9s}")  # fmt: skip
    for name, path in paths.items():
        for w in args.workers:
            r = run_case(path, w, args)
            results[f"{name}_w{w}"] = r
            row = f"{r['startup_s']:10.2f} {r['images_per_s']:9.0f} {r['peak_rss_mb']:11.1f}"
            print(f"{name:12s} {w:7d} {row} {r['worker_peak_rss_mb']:9.1f}", flush=True)
    write(Path(args.out), args, results, None)


def write(
    out: Path, args: argparse.Namespace, results: dict[str, dict[str, float]],
    rates: dict[str, list[float]] | None,
) -> None:  # fmt: skip
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from physgen.io import RunWriter

    out.parent.mkdir(parents=True, exist_ok=True)
    with RunWriter(out, config=vars(args), seed=0, device="cpu", overwrite=True) as run:
        for case, r in results.items():
            for key, value in r.items():
                run.add_metric(f"{case}_{key}", float(value))
        if rates is not None:
            ratio = statistics.median(s / m for s, m in zip(rates["stream"], rates["memory"],
                                                             strict=True))  # fmt: skip
            run.add_metric("train_stream_over_memory", ratio)
            for mode, values in rates.items():
                run.add_curve(f"train_{mode}_steps_per_second", np.asarray(values))
            print(f"training steps/s: stream/memory median paired ratio {ratio:.3f}")
    if not results:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results)
    axes[0].barh(names, [results[c]["images_per_s"] for c in names])
    axes[0].set_xlabel("images/s (batch 256, flips)")
    axes[1].barh(names, [results[c]["peak_rss_mb"] for c in names])
    axes[1].set_xlabel("peak RSS above torch import (MB)")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
