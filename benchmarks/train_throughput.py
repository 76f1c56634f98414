"""Training throughput: ``physgen.train`` vs a plain PyTorch loop, same MLP, batch and process.

Both loops train EDM on 2-D moons with the default MLP, Adam, gradient clipping and an EMA of
the weights, in the same process, alternating repeats so that machine noise hits both alike.
The baseline is the loop a researcher would write by hand (one ``.item()`` per 50 steps for
logging, no checkpoints). physgen's loop adds its progress bookkeeping, per-step loss curve
and a checkpoint at the end. Reported: steps/s of each and the ratio (goal ≥ 0.95).

    python benchmarks/train_throughput.py --out benchmarks/results/train_throughput.h5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import physgen
from physgen.io import RunWriter


def plain_loop(process, net, x, *, steps, batch_size, lr, ema_decay, grad_clip, seed):  # type: ignore[no-untyped-def]
    """The hand-written baseline: what physgen's loop must not be slower than."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ema = [p.detach().clone() for p in net.parameters()]
    g_data = torch.Generator().manual_seed(seed)
    g_loss = torch.Generator().manual_seed(seed + 1)
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=g_data)
        loss = process.loss(net, x[idx], step=step, generator=g_loss).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(net.parameters()), 1 - ema_decay)
        if step % 50 == 0:
            losses.append(loss.item())
    return steps / (time.perf_counter() - start)


def physgen_loop(process, net, data, *, steps, batch_size, lr, ema_decay, grad_clip, seed):  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        physgen.train(
            process,
            net,
            data,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            ema_decay=ema_decay,
            grad_clip=grad_clip,
            seed=seed,
            checkpoint=Path(tmp) / "ckpt.safetensors",
            checkpoint_every=None,
            progress=False,
        )
        return steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--out", default="benchmarks/results/train_throughput.h5")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = physgen.load_dataset("moons", 20_000, seed=0)
    kw = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=2e-3,
        ema_decay=0.999,
        grad_clip=1.0,
        seed=0,
    )
    rates: dict[str, list[float]] = {"plain": [], "physgen": []}
    for r in range(args.repeats):
        for name in ("plain", "physgen") if r % 2 == 0 else ("physgen", "plain"):
            torch.manual_seed(0)
            process = physgen.get_process("edm", sigma_data=1.0)
            net = physgen.get_network("mlp", data.event_shape)
            if name == "plain":
                rates[name].append(plain_loop(process, net, data.x, **kw))
            else:
                rates[name].append(physgen_loop(process, net, data, **kw))
            print(f"repeat {r} {name:8s} {rates[name][-1]:8.1f} steps/s")
    plain, ours = statistics.median(rates["plain"]), statistics.median(rates["physgen"])
    # Paired ratios: each repeat runs both loops back to back, so slow drifts in machine load
    # cancel within a pair; the median over pairs is the reported figure.
    ratio = statistics.median(o / p for o, p in zip(rates["physgen"], rates["plain"], strict=True))
    print(
        f"\nmedian steps/s: plain PyTorch {plain:.1f}, physgen.train {ours:.1f}; "
        f"median paired ratio {ratio:.3f} (goal ≥ 0.95); threads {torch.get_num_threads()}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with RunWriter(out, config=vars(args), seed=0, device="cpu", overwrite=True) as run:
        run.add_curve("plain_steps_per_second", torch.tensor(rates["plain"]))
        run.add_curve("physgen_steps_per_second", torch.tensor(rates["physgen"]))
        run.add_metric("plain_steps_per_second", plain)
        run.add_metric("physgen_steps_per_second", ours)
        run.add_metric("ratio", ratio)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
