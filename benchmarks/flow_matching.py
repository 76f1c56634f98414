"""Flow matching on 2-D data: I-CFM versus minibatch OT-CFM versus one round of reflow.

Tong et al. (2024), "Improving and Generalizing Flow-Based Generative Models with Minibatch
Optimal Transport", §5.1 (8 gaussians → moons); Liu et al. (2023), "Flow Straight and Fast"
(reflow, straightness). Every model is the shared MLP backbone trained by
:func:`physgen.train` with the same seed, initial weights, steps, batch size and learning rate:

* ``icfm`` — process ``cfm`` (independent coupling);
* ``otcfm`` — process ``otcfm`` (exact minibatch OT, POT ``ot.emd``);
* ``reflow`` — process ``rectified`` on ``--reflow-pairs`` pairs ``(z, ODE(z))`` of the I-CFM
  model (dopri5), initialised from the I-CFM weights (Liu et al. 2023, §2.3);
* ``torchcfm_icfm`` / ``torchcfm_otcfm`` — the same recipe with torchcfm's
  ``ConditionalFlowMatcher`` / ``ExactOptimalTransportConditionalFlowMatcher`` computing
  ``(t, x_t, u_t)``, when ``torchcfm`` is importable (otherwise recorded as unavailable).
  ``pip install torchcfm`` pulls another torch, so it is not in the project's environment; its
  pure-Python wheel unpacked onto ``PYTHONPATH`` (``pip download torchcfm --no-deps``) works.
  torchcfm draws ``t`` and its plan samples from the global torch and NumPy RNGs (seeded here).

For each model: exact W2 (POT ``ot.emd2``, squared Euclidean cost, equal-size sets) between
``--n-eval`` samples and fresh target samples, for Euler at NFE 1, 2, 4, 8, 100 and dopri5
(rtol = atol = 1e-5; its NFE is reported); the straightness ``S`` of the learned flow
(:func:`physgen.sampling.reflow.straightness`, RK4, 100 steps); the coupling's cost per training
step and the whole step's cost (ms). ``W2(data, data)`` of two fresh target sets is the floor.

Results go to one HDF5 run file (atomic) with a PNG beside it::

    python benchmarks/flow_matching.py --out benchmarks/results/flow_matching.h5
    python benchmarks/flow_matching.py --source gaussian --out benchmarks/results/fm_gauss.h5
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import ot
import torch
from physgen_flow.matching import FlowMatching, source_prior
from scipy.spatial.distance import cdist
from torch import Tensor, nn

import physgen
from physgen.io import RunWriter
from physgen.sampling import sample
from physgen.sampling.reflow import straightness, write_pairs

#: (sampler, steps) of the evaluation grid; dopri5's NFE is whatever it spends
SAMPLERS = [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("euler", 100), ("dopri5", 1)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/flow_matching.h5"))
    p.add_argument("--source", default="8gaussians", help="x_0: gaussian or a 2-D dataset")
    p.add_argument("--target", default="moons", help="x_1: a registered 2-D dataset")
    p.add_argument("--steps", type=int, default=2000, help="training steps per model")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--ema", type=float, default=0.995, help="EMA decay (0.999^2000 keeps 13%% of the init)"
    )
    p.add_argument("--width", type=int, default=128, help="MLP width")
    p.add_argument("--depth", type=int, default=3, help="MLP residual blocks")
    p.add_argument("--n-train", type=int, default=20_000, help="training examples")
    p.add_argument("--n-eval", type=int, default=2000, help="samples per W2 evaluation")
    p.add_argument("--reflow-pairs", type=int, default=10_000, help="pairs for the reflow round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--no-torchcfm", action="store_true", help="skip the torchcfm comparison")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------
# Instruments
# --------------------------------------------------------------------------------------


class TimedCoupling:
    """Wraps a coupling and accumulates the wall time of its calls."""

    def __init__(self, inner: Any):
        self.inner, self.seconds, self.calls = inner, 0.0, 0
        self.independent = getattr(inner, "independent", False)

    def __call__(self, x0: Tensor, x1: Tensor, generator: Any = None) -> tuple[Tensor, Tensor]:
        start = time.perf_counter()
        out = self.inner(x0, x1, generator)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


class TorchCFM(FlowMatching):
    """The same process (source, views) with torchcfm's matcher computing ``(t, x_t, u_t)``.
    torchcfm draws ``t`` and its OT plan from the global RNG (seeded by the script)."""

    def __init__(self, matcher: Any, source: str):
        super().__init__(source=source)
        self.matcher = matcher
        self._coupling = TimedCoupling(self._match)
        self._last: tuple[Tensor, Tensor, Tensor] | None = None

    def _match(self, x0: Tensor, x1: Tensor, generator: Any = None) -> tuple[Tensor, Tensor]:
        self._last = self.matcher.sample_location_and_conditional_flow(x0, x1)
        return x0, x1

    def loss(self, net: Any, y: Tensor, **kw: Any) -> Tensor:
        x0 = source_prior(self.options.source)(
            tuple(y.shape), generator=kw.get("generator"), device=y.device, dtype=y.dtype
        )
        self.coupling(x0, y)  # timed: the matcher's pairing and path sampling
        assert self._last is not None
        t, x_t, u_t = self._last
        return (net(x_t, t) - u_t).pow(2).flatten(1).mean(1)


def w2(a: Tensor, b: Tensor) -> float:
    """Exact W2 between two equal-size point sets (uniform weights, POT network simplex)."""
    cost = cdist(a.double().numpy(), b.double().numpy(), "sqeuclidean")
    n = len(a)
    return float(np.sqrt(ot.emd2(np.full(n, 1 / n), np.full(n, 1 / n), cost, numItermax=10**7)))


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def make_net(args: argparse.Namespace) -> nn.Module:
    # the same initial weights for every model
    return physgen.get_network("mlp", (2,), width=args.width, depth=args.depth, seed=args.seed)


def train_model(
    name: str, process: Any, net: nn.Module, data: Any, args: argparse.Namespace
) -> dict[str, Any]:
    timed = TimedCoupling(process.coupling) if not isinstance(process, TorchCFM) else None
    if timed is not None:
        process._coupling = timed
    torch.manual_seed(args.seed)  # torchcfm's global draws (t, plan samples)
    np.random.seed(args.seed)
    run = physgen.train(process, net, data, steps=args.steps, batch_size=args.batch_size,
                        lr=args.lr, ema_decay=args.ema, seed=args.seed, progress=False)  # fmt: skip
    coupling = timed or process.coupling
    print(f"[{name}] trained {args.steps} steps in {run.wall_seconds:.1f} s", flush=True)
    return {
        "name": name, "process": process, "net": run.ema, "losses": run.losses,
        "step_ms": 1e3 * run.wall_seconds / args.steps,
        "coupling_ms": 1e3 * coupling.seconds / max(coupling.calls, 1),
    }  # fmt: skip


def evaluate(model: dict[str, Any], target: Tensor, args: argparse.Namespace) -> dict[str, Any]:
    process, net = model["process"], model["net"]
    rows, samples = [], {}
    for sampler, steps in SAMPLERS:
        out = sample(process, net, (2,), n=args.n_eval, sampler=sampler, steps=steps,
                     seed=args.seed + 1)  # fmt: skip
        key = f"{sampler}{steps}" if sampler == "euler" else sampler
        samples[key] = out.x
        rows.append({"sampler": sampler, "steps": steps, "nfe": out.nfe, "w2": w2(out.x, target)})
    view = process.ode(net)
    x0 = view.prior((1000, 2), generator=torch.Generator().manual_seed(args.seed + 2))
    return {**model, "rows": rows, "samples": samples, "straightness": straightness(view, x0)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    data = physgen.load_dataset(args.target, args.n_train, seed=args.seed)
    target = physgen.load_dataset(args.target, args.n_eval, seed=args.seed + 10_000).x
    floor = w2(target, physgen.load_dataset(args.target, args.n_eval, seed=args.seed + 20_000).x)
    # Warm-up (first-call costs would otherwise be charged to the first model's step time).
    physgen.train(physgen.get_process("cfm"), make_net(args), data, steps=20, progress=False)
    models: list[dict[str, Any]] = []
    for name, process_name in (("icfm", "cfm"), ("otcfm", "otcfm")):
        process = physgen.get_process(process_name, source=args.source)
        models.append(train_model(name, process, make_net(args), data, args))
    # One reflow round from I-CFM: pairs by dopri5, student initialised from the teacher.
    pairs_path = args.out.with_name(args.out.stem + "_pairs.npz")
    start = time.perf_counter()
    write_pairs(models[0]["process"], models[0]["net"], (2,), args.reflow_pairs,
                out_path=pairs_path, sampler="dopri5", seed=args.seed + 3)  # fmt: skip
    pair_seconds = time.perf_counter() - start
    pairs = physgen.load_dataset(str(pairs_path), args.reflow_pairs)
    rectified = physgen.get_process("rectified", pairs=str(pairs_path), source=args.source)
    student = copy.deepcopy(models[0]["net"]).train().requires_grad_(True)
    models.append(train_model("reflow", rectified, student, pairs, args))
    models[-1]["pair_seconds"] = pair_seconds
    torchcfm = None if args.no_torchcfm else _torchcfm()
    if torchcfm is not None:
        for name, matcher in (
            ("torchcfm_icfm", torchcfm.ConditionalFlowMatcher(sigma=0.0)),
            ("torchcfm_otcfm", torchcfm.ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)),
        ):
            process = TorchCFM(matcher, args.source)
            models.append(train_model(name, process, make_net(args), data, args))
    results = [evaluate(m, target, args) for m in models]
    pairs_path.unlink()
    return {
        "results": results, "floor": floor, "target": target,
        "torchcfm": getattr(torchcfm, "__version__", None) if torchcfm else None,
    }  # fmt: skip


def _torchcfm() -> Any:
    try:
        import torchcfm.conditional_flow_matching as cfm
    except Exception as err:  # not installed, or its imports fail
        print(f"torchcfm unavailable ({type(err).__name__}: {err}); skipping", flush=True)
        return None
    import torchcfm

    cfm.__version__ = getattr(torchcfm, "__version__", "unknown")
    return cfm


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def table(out: dict[str, Any]) -> str:
    head = ["model", *[f"{s}{n}" if s == "euler" else s for s, n in SAMPLERS]]
    head += ["dopri5 NFE", "S", "coupling ms", "step ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in out["results"]:
        cells = [r["name"], *[f"{row['w2']:.3f}" for row in r["rows"]]]
        cells += [str(r["rows"][-1]["nfe"]), f"{r['straightness']:.4f}"]
        cells += [f"{r['coupling_ms']:.2f}", f"{r['step_ms']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nW2 floor (two fresh target sets of {len(out['target'])}): {out['floor']:.3f}")
    by = {r["name"]: r for r in out["results"]}
    for ours, theirs in (("icfm", "torchcfm_icfm"), ("otcfm", "torchcfm_otcfm")):
        if theirs in by:
            both = zip(by[ours]["rows"], by[theirs]["rows"], strict=True)
            ratio = [a["w2"] / b["w2"] for a, b in both]
            step = by[ours]["step_ms"] / by[theirs]["step_ms"]
            text = ", ".join(f"{x:.2f}" for x in ratio)
            lines.append(f"W2 ratio {ours}/{theirs} per sampler: {text}; step time {step:.2f}")
    if out["torchcfm"] is None:
        lines.append("torchcfm: not available, no peer comparison")
    return "\n".join(lines)


def write_h5(path: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    with RunWriter(path, config=config, seed=args.seed, device="cpu",
                   overwrite=args.overwrite) as run:  # fmt: skip
        run.set_attrs(torchcfm=out["torchcfm"], table=table(out))
        run.add_metric("w2_floor", out["floor"])
        run.add_samples("target", out["target"])
        rows = []
        for r in out["results"]:
            for row in r["rows"]:
                rows.append((r["name"], row["sampler"], row["steps"], row["nfe"], row["w2"]))
            run.add_metric(f"straightness.{r['name']}", r["straightness"])
            run.add_metric(f"coupling_ms.{r['name']}", r["coupling_ms"])
            run.add_metric(f"step_ms.{r['name']}", r["step_ms"])
            run.add_curve(f"loss.{r['name']}", r["losses"])
            for key, x in r["samples"].items():
                run.add_samples(f"{r['name']}.{key}", x, model=r["name"], sampler=key)
        dtype = [("model", "S32"), ("sampler", "S16"), ("steps", "i4"), ("nfe", "i4"), ("w2", "f8")]
        run.file.create_dataset("table", data=np.array(rows, dtype=dtype))
        run.file["table"].attrs["columns"] = json.dumps([d[0] for d in dtype])


def plot(path: Path, out: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from physgen.io import atomic_path

    results = out["results"]
    fig, axes = plt.subplots(2, len(results) + 1, figsize=(3.2 * (len(results) + 1), 6.4))
    ax = axes[0, 0]
    for r in results:
        euler = [row for row in r["rows"] if row["sampler"] == "euler"]
        (line,) = ax.plot(
            [e["nfe"] for e in euler], [e["w2"] for e in euler], "o-", label=r["name"]
        )
        dop = r["rows"][-1]
        ax.plot(dop["nfe"], dop["w2"], "*", ms=10, color=line.get_color())
    ax.axhline(out["floor"], color="0.6", ls=":", label="data floor")
    ax.set(xscale="log", yscale="log", xlabel="NFE (Euler; ★ dopri5)", ylabel="W2", title="W2")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    ax.bar([r["name"] for r in results], [r["straightness"] for r in results], color="C0")
    ax.set(ylabel="S", title="straightness (RK4, 100 steps)")
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    target = out["target"].numpy()
    for col, r in enumerate(results, start=1):
        for row, key in enumerate(("euler1", "dopri5")):
            ax, x = axes[row, col], r["samples"][key].numpy()
            ax.scatter(target[:, 0], target[:, 1], s=1, c="0.8", rasterized=True)
            ax.scatter(x[:, 0], x[:, 1], s=1, c="C1", rasterized=True)
            w = next(e["w2"] for e in r["rows"] if (e["sampler"] + str(e["steps"])) == key
                     or (key == "dopri5" and e["sampler"] == "dopri5"))  # fmt: skip
            ax.set(title=f"{r['name']} {key}: W2 {w:.3f}", xlim=(-3, 3), ylim=(-3, 3))
            ax.set_aspect("equal")
            ax.title.set_fontsize(8)
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out} exists; pass --overwrite")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    out = run(args)
    write_h5(args.out, args, out)
    plot(args.out.with_suffix(".png"), out)
    print(table(out))
    seconds = time.perf_counter() - start
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {seconds:.0f} s")


if __name__ == "__main__":
    main()
