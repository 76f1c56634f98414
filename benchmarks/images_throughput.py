"""Image throughput: images/s of U-Net training and sampling per preset, eager vs bf16 vs compile.

Training is ``physgen.train`` (EDM process, fused Adam, gradient clipping, EMA, no checkpoint);
sampling is ``physgen.sample`` (Heun, fixed steps, the EMA-free trained-from-init net in eval
mode). Modes: ``fp32`` (eager), ``bf16`` (autocast; training through ``precision="bf16"``,
sampling inside ``torch.autocast``), ``compile`` (``torch.compile``, inductor) and
``compile_bf16``. Each (preset, mode) first runs one warm-up call (for compile modes its wall
time, minus the warm-up steps at the measured rate, is reported as the compile time); the
timed calls then reuse the same module, so dynamo's cache serves them. Reported: the median of
``--repeats`` timed calls, in images/s (training: batch · steps / s; sampling: n / s).

Presets and shapes: ``tiny`` on 8×8 digits, ``small`` on 16×16 digits, ``cifar10`` on random
3×32×32 data (throughput does not depend on the pixel values; CIFAR-10 itself is not offline).

    python benchmarks/images_throughput.py --threads 1                 # CPU, compile tiny only
    python benchmarks/images_throughput.py --device cuda               # GPU, every preset

Goal (GPU only): bf16 + compile ≥ 1.5× fp32 eager training throughput for the cifar10 preset.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

import physgen
from physgen.io import RunWriter

MODES = ("fp32", "bf16", "compile", "compile_bf16")
#: preset → (dataset or None for random data, event shape, CPU batch, GPU batch)
SHAPES: dict[str, tuple[str | None, tuple[int, int, int], int, int]] = {
    "tiny": ("digits", (1, 8, 8), 64, 512),
    "small": ("digits16", (1, 16, 16), 32, 256),
    "cifar10": (None, (3, 32, 32), 4, 128),
}


def _data(preset: str, device: torch.device) -> Any:
    name, shape, _, _ = SHAPES[preset]
    if name is not None:
        return physgen.load_dataset(name, 1024, seed=0)
    x = torch.rand((256, *shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
    return SimpleNamespace(x=x, name="random32")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train(net: Any, data: Any, mode: str, steps: int, batch: int, device: torch.device) -> float:
    """Wall seconds of one ``physgen.train`` call of ``steps`` steps."""
    _sync(device)
    start = time.perf_counter()
    physgen.train(
        physgen.get_process("edm", sigma_data=0.5), net, data, steps=steps, batch_size=batch,
        lr=2e-4, ema_decay=0.999, grad_clip=1.0, device=device, progress=False,
        checkpoint=None, log_every=max(steps, 1), precision="bf16" if "bf16" in mode else "fp32",
        compile=mode.startswith("compile"),
    )  # fmt: skip
    _sync(device)
    return time.perf_counter() - start


def _sample(
    fwd: Any, shape: tuple[int, ...], mode: str, n: int, steps: int, device: torch.device
) -> float:
    """Wall seconds of one ``physgen.sample`` call (Heun, ``steps`` steps)."""
    cast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if "bf16" in mode
        else contextlib.nullcontext()
    )
    _sync(device)
    start = time.perf_counter()
    with cast:
        physgen.sample(
            physgen.get_process("edm", sigma_data=0.5), fwd, shape, n=n, sampler="heun",
            steps=steps, seed=0, batch_size=n, device=device,
        )  # fmt: skip
    _sync(device)
    return time.perf_counter() - start


def measure(
    preset: str, mode: str, args: argparse.Namespace, device: torch.device
) -> dict[str, float]:
    """Training and sampling images/s (medians) and the compile seconds of one (preset, mode)."""
    _, shape, cpu_batch, gpu_batch = SHAPES[preset]
    batch = args.batch or (gpu_batch if device.type == "cuda" else cpu_batch)
    n = args.sample_n or batch
    data = _data(preset, device)
    net = physgen.get_network("unet", shape, preset=preset).to(device)
    # Training: warm-up call (compiles), then timed calls on the same module.
    warm = _train(net, data, mode, args.warmup, batch, device)
    train_s = [
        _train(net, data, mode, args.train_steps, batch, device) for _ in range(args.repeats)
    ]
    train_rate = batch * args.train_steps / statistics.median(train_s)
    # Sampling: eval mode, the compiled wrapper built once (inference graph).
    net.eval()
    fwd = torch.compile(net) if mode.startswith("compile") else net
    warm_sample = _sample(fwd, shape, mode, n, args.sample_steps, device)
    sample_s = [
        _sample(fwd, shape, mode, n, args.sample_steps, device) for _ in range(args.repeats)
    ]
    sample_rate = n / statistics.median(sample_s)
    compiled = mode.startswith("compile")
    return {
        "batch": batch,
        "sample_n": n,
        "train_images_per_s": train_rate,
        "sample_images_per_s": sample_rate,
        # warm-up wall time minus what its steps cost at the measured rate
        "train_compile_s": warm - batch * args.warmup / train_rate if compiled else 0.0,
        "sample_compile_s": warm_sample - n / sample_rate if compiled else 0.0,
    }


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from physgen.io import atomic_write

    presets = list(dict.fromkeys(r["preset"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(MODES)
    for ax, key, label in zip(axes, ("train", "sample"), ("training", "sampling"), strict=True):
        for j, mode in enumerate(MODES):
            xs = [i + (j - 1.5) * width for i, p in enumerate(presets)]
            rate = {r["preset"]: r[f"{key}_images_per_s"] for r in rows if r["mode"] == mode}
            ys = [rate.get(p, np.nan) for p in presets]
            ax.bar(xs, ys, width, label=mode)
        ax.set_xticks(range(len(presets)), presets)
        ax.set_yscale("log")
        ax.set_ylabel("images / s")
        ax.set_title(f"{label} ({title})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--presets", default="tiny,small,cifar10")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--compile-presets", default=None,
                    help="presets that get compile modes (default: all on GPU, tiny on CPU, "
                         "where inductor's C++ compile takes minutes per graph)")  # fmt: skip
    ap.add_argument("--skip", default=None,
                    help="preset:mode pairs to leave out (default on CPU: cifar10:bf16 and "
                         "cifar10:compile_bf16; bf16 without CPU bf16 instructions ran ~10× "
                         "slower than fp32 on small, ~80 s per cifar10 step)")  # fmt: skip
    ap.add_argument("--batch", type=int, default=0, help="training batch (0: per preset)")
    ap.add_argument("--sample-n", type=int, default=0, help="images per sample call (0: batch)")
    ap.add_argument("--sample-steps", type=int, default=5, help="Heun steps (NFE 2·steps − 1)")
    ap.add_argument("--train-steps", type=int, default=5, help="steps per timed train call")
    ap.add_argument("--warmup", type=int, default=2, help="steps of the warm-up train call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/images_throughput.h5")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    where = gpu or f"CPU ({platform.processor() or platform.machine()}), no GPU in this run"
    print(
        f"device: {device} — {where}; torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    load_before = _uptime()
    print(f"uptime before: {load_before}")
    presets, modes = args.presets.split(","), args.modes.split(",")
    compile_presets = (
        args.compile_presets.split(",") if args.compile_presets is not None
        else presets if device.type == "cuda" else [p for p in presets if p == "tiny"]
    )  # fmt: skip
    cpu_skip = "cifar10:bf16,cifar10:compile_bf16" if device.type == "cpu" else ""
    skip = set((args.skip if args.skip is not None else cpu_skip).split(","))
    rows: list[dict[str, Any]] = []
    for preset in presets:
        for mode in modes:
            if mode.startswith("compile") and preset not in compile_presets:
                continue
            if f"{preset}:{mode}" in skip:
                continue
            start = time.perf_counter()
            row = {"preset": preset, "mode": mode, **measure(preset, mode, args, device)}
            rows.append(row)
            took = time.perf_counter() - start
            print(f"{preset:8s} {mode:13s} train {row['train_images_per_s']:9.1f} img/s  sample "
                  f"{row['sample_images_per_s']:9.1f} img/s  compile {row['train_compile_s']:.1f}"
                  f"+{row['sample_compile_s']:.1f} s ({took:.0f} s)")  # fmt: skip
    load_after = _uptime()
    print(f"uptime after: {load_after}\n")
    table = [
        f"device: {device} — {where}",
        "",
        "| preset | mode | batch | train img/s | × fp32 | sample img/s | × fp32 | compile s (train + sample) |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = next(b for b in rows if b["preset"] == r["preset"] and b["mode"] == "fp32")
        comp = (f"{r['train_compile_s']:.0f} + {r['sample_compile_s']:.0f}"
                if r["mode"].startswith("compile") else "–")  # fmt: skip
        table.append(
            f"| {r['preset']} | {r['mode']} | {r['batch']} | {r['train_images_per_s']:.1f} | "
            f"{r['train_images_per_s'] / base['train_images_per_s']:.2f} | "
            f"{r['sample_images_per_s']:.1f} | "
            f"{r['sample_images_per_s'] / base['sample_images_per_s']:.2f} | {comp} |"
        )
    print("\n".join(table))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {**vars(args), "where": where, "uptime_before": load_before,
              "uptime_after": load_after, "torch": torch.__version__}  # fmt: skip
    with RunWriter(out, config=config, seed=0, device=str(device), overwrite=True) as run:
        for r in rows:
            for key, value in r.items():
                if key not in ("preset", "mode"):
                    run.add_metric(f"{r['preset']}_{r['mode']}_{key}", float(value))
    _plot(rows, out.with_suffix(".png"), f"{device.type}, {torch.get_num_threads()} thread(s)")
    print(f"\nresults: {out}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
