"""Low-NFE samplers: physgen's multistep solvers and σ-schedules against k-diffusion and
diffusers, all driving the same exact denoiser (issue 9).

Problem: an isotropic Gaussian mixture in R^d (``--dim`` 32, ``--components`` 12, std
``--std`` 0.07, means ~ N(0, 0.5² I) so σ_data ≈ 0.5), whose denoiser is closed form
(:class:`physgen.oracles.GaussianMixture`, math.md §6), on EDM's range σ ∈ [0.002, 80]. Every
sampler starts from the same prior draws ``x ~ N(0, 80² I)`` and ends at σ = 0, where each one
returns ``D(x; σ_min)`` (its step into σ = 0). The reference is the same map computed tightly:
float64 dopri5 (rtol = atol = ``--ref-tol`` 1e-8) from 80 to 0.002, then ``D(·; 0.002)``.
Error = per-dimension RMS distance to it.

NFE budgets (``--budgets`` 6,10,20,35) are matched exactly: one denoiser call per step for
Euler, LMS, DPM-Solver++(2M/3M), UniPC, iPNDM and diffusers' schedulers (``steps = NFE``);
Heun (EDM Algorithm 1) spends ``2·steps − 1``, so it runs with the largest odd NFE ≤ budget
(5, 9, 19, 35) and is listed with the NFE it used.

Schedules: physgen's solvers run on ``karras`` (ρ = 7, the peers' default), ``logsnr`` and
``tuned``: karras with ρ chosen per (solver, NFE) from ``--rhos`` (∞ = logsnr) by the error on
a separate *pilot* set of prior draws (``--pilot-seed``, its own dopri5 reference); the test
draws (``--seed``) are never looked at for the choice. Peers run with their own schedules:
k-diffusion's ``get_sigmas_karras`` (ρ = 7) and ``get_sigmas_exponential`` (logSNR), and
diffusers' EDM schedulers with ``sigma_schedule`` karras and exponential.

Peers are optional (``not installed`` otherwise). Installing them into the project venv would
replace torch, so they live in a side venv that sees the project's packages::

    python -m venv --system-site-packages /work/venv-peers
    echo "import site; site.addsitedir('/work/venv/lib/python3.11/site-packages')" \\
        > /work/venv-peers/lib/python3.11/site-packages/zz_work_venv.pth
    /work/venv-peers/bin/pip install --no-deps k-diffusion diffusers torchsde trampoline
    /work/venv-peers/bin/pip install huggingface_hub regex importlib_metadata
    /work/venv-peers/bin/python benchmarks/low_nfe.py

``k_diffusion/__init__`` imports its training modules (torchvision, clip, wandb, …);
:func:`import_k_diffusion_sampling` imports only ``k_diffusion.sampling`` (and ``utils``,
which needs ``torchvision.transforms.functional`` at import time only: stubbed when absent).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import math
import platform
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physgen.io import atomic_write, physgen_version
from physgen.oracles import GaussianMixture
from physgen.process import CountedFn, DenoiserView
from physgen.solvers import grids, multistep, ode

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
Denoiser = Callable[[Tensor, Tensor], Tensor]
#: physgen solvers on the denoiser view; heun/euler run on its PF-ODE (ode view)
OURS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm")
SCHEDULES = ("karras", "logsnr", "tuned")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/low_nfe.h5"))
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--components", type=int, default=12)
    p.add_argument("--std", type=float, default=0.07, help="component std")
    p.add_argument("--n", type=int, default=256, help="test prior draws")
    p.add_argument("--n-pilot", type=int, default=128, help="pilot draws (schedule choice)")
    p.add_argument("--seed", type=int, default=1, help="test draws")
    p.add_argument("--pilot-seed", type=int, default=2, help="pilot draws")
    p.add_argument("--gmm-seed", type=int, default=0)
    p.add_argument("--budgets", default="6,10,20,35")
    p.add_argument("--rhos", default="2,3,4,5,7,10,15,25,inf", help="tuned: candidate ρ")
    p.add_argument("--ref-tol", type=float, default=1e-8)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def make_mixture(args: argparse.Namespace) -> GaussianMixture:
    gen = torch.Generator().manual_seed(args.gmm_seed)
    means = 0.5 * torch.randn(args.components, args.dim, generator=gen, dtype=F64)
    weights = 0.5 + torch.rand(args.components, generator=gen, dtype=F64)
    return GaussianMixture(weights, means, torch.full((args.components,), args.std, dtype=F64))


def reference(denoise: Denoiser, x0: Tensor, tol: float) -> Tensor:
    """dopri5 from σ_max to σ_min, then the step into 0: ``D(x; σ_min)``."""
    field = DenoiserView(denoise, None, None).as_ode().field  # type: ignore[arg-type]
    span = torch.tensor([SIGMA_MAX, SIGMA_MIN, 0.0], dtype=F64)
    return ode.dopri5(field, x0, span, rtol=tol, atol=tol, max_steps=1_000_000)


def rms(x: Tensor, ref: Tensor) -> float:
    return float((x - ref).pow(2).mean().sqrt())


# -- physgen -----------------------------------------------------------------------------------


def steps_for(name: str, nfe: int) -> int:
    """Grid intervals (ending at σ = 0) that spend at most ``nfe`` evaluations."""
    return (nfe + 1) // 2 if name == "heun" else nfe


def run_ours(name: str, denoise: Denoiser, x0: Tensor, grid: Tensor) -> Tensor:
    if name in ("euler", "heun"):
        field = DenoiserView(denoise, None, None).as_ode().field  # type: ignore[arg-type]
        return getattr(ode, name)(field, x0, grid)
    return getattr(multistep, name)(denoise, x0, grid)


def schedule_grid(rho: float, steps: int) -> Tensor:
    if math.isinf(rho):
        return grids.logsnr(steps, SIGMA_MIN, SIGMA_MAX)
    return grids.karras(steps, SIGMA_MIN, SIGMA_MAX, rho=rho)


def tune_rho(
    name: str, nfe: int, denoise: Denoiser, pilot: Tensor, pilot_ref: Tensor, rhos: list[float]
) -> float:
    """The ρ with the smallest pilot error (ties: the first)."""
    steps = steps_for(name, nfe)
    errors = [rms(run_ours(name, denoise, pilot, schedule_grid(r, steps)), pilot_ref) for r in rhos]
    return rhos[int(np.argmin(errors))]


# -- peers -------------------------------------------------------------------------------------


def import_k_diffusion_sampling() -> types.ModuleType | None:
    """``k_diffusion.sampling`` without running ``k_diffusion/__init__`` (which imports the
    training stack): an empty package module with the right ``__path__`` stands in for it."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "k_diffusion" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = package
    stubs = []
    if importlib.util.find_spec("torchvision") is None:  # utils imports it, sampling never uses it
        names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
        stubs = [types.ModuleType(n) for n in names]
        stubs[0].transforms, stubs[1].functional = stubs[1], stubs[2]  # type: ignore[attr-defined]
        sys.modules.update({m.__name__: m for m in stubs})
    try:
        return importlib.import_module("k_diffusion.sampling")
    finally:  # other packages (diffusers) probe for torchvision: leave no stub behind
        for m in stubs:
            sys.modules.pop(m.__name__, None)


def k_diffusion_runs(
    kd: types.ModuleType, denoise: Denoiser, x0: Tensor, nfe: int
) -> dict[str, tuple[int, Tensor]]:
    """k-diffusion's deterministic EDM samplers on its own schedules: name -> (NFE, x)."""
    samplers: dict[str, tuple[Callable[..., Tensor], dict[str, Any]]] = {
        "euler": (kd.sample_euler, {}),
        "heun": (kd.sample_heun, {}),
        "lms": (kd.sample_lms, {}),
        "dpmpp_2m": (kd.sample_dpmpp_2m, {}),
        "dpmpp_2m_sde(eta=0)": (kd.sample_dpmpp_2m_sde, {"eta": 0.0}),
        "dpmpp_3m_sde(eta=0)": (kd.sample_dpmpp_3m_sde, {"eta": 0.0}),
    }
    out = {}
    for schedule, make in (
        ("karras", kd.get_sigmas_karras),
        ("exponential", kd.get_sigmas_exponential),
    ):
        for name, (fn, kwargs) in samplers.items():
            steps = steps_for("heun" if name == "heun" else name, nfe)
            sigmas = make(steps, SIGMA_MIN, SIGMA_MAX).to(F64)  # steps levels + 0
            model = CountedFn(denoise)
            x = fn(model, x0.clone(), sigmas, disable=True, **kwargs)
            out[f"k-diffusion {name} {schedule}"] = (model.nfe, x)
    return out


def diffusers_runs(denoise: Denoiser, x0: Tensor, nfe: int) -> dict[str, tuple[int, Tensor]]:
    """diffusers' EDM schedulers: the network output is what their preconditioning turns into
    our denoiser, ``F = (D − c_skip x)/c_out``, read off their own ``precondition_outputs``."""
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

    makers = {
        "EDMEuler": lambda s: EDMEulerScheduler(sigma_schedule=s),
        "EDMDPMSolverMultistep order 2": lambda s: EDMDPMSolverMultistepScheduler(
            solver_order=2, sigma_schedule=s
        ),
        "EDMDPMSolverMultistep order 3": lambda s: EDMDPMSolverMultistepScheduler(
            solver_order=3, sigma_schedule=s
        ),
    }
    out = {}
    for schedule in ("karras", "exponential"):
        for name, make in makers.items():
            scheduler = make(schedule)
            scheduler.set_timesteps(nfe)
            x, count = x0.clone(), 0
            for t in scheduler.timesteps:
                scheduler.scale_model_input(
                    x, t
                )  # required (sets the step index); x stays unscaled
                sigma = scheduler.sigmas[scheduler.step_index].to(F64)
                d = denoise(x, sigma)
                count += 1
                skip = scheduler.precondition_outputs(x, torch.zeros_like(x), sigma)
                c_out = scheduler.precondition_outputs(x, torch.ones_like(x), sigma) - skip
                x = scheduler.step((d - skip) / c_out, t, x).prev_sample
            out[f"diffusers {name} {schedule}"] = (count, x)
    return out


# -- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = [int(v) for v in args.budgets.split(",")]
    rhos = [float(v) for v in args.rhos.split(",")]
    gmm = make_mixture(args)
    denoise = gmm.denoise
    shape = (args.dim,)
    x0 = SIGMA_MAX * torch.randn(
        args.n, *shape, generator=torch.Generator().manual_seed(args.seed), dtype=F64
    )
    gen = torch.Generator().manual_seed(args.pilot_seed)
    pilot = SIGMA_MAX * torch.randn(args.n_pilot, *shape, generator=gen, dtype=F64)
    start = time.perf_counter()
    ref, pilot_ref = reference(denoise, x0, args.ref_tol), reference(denoise, pilot, args.ref_tol)
    ref_check = reference(denoise, x0, args.ref_tol / 10)  # how tight the reference is
    print(
        f"reference: {time.perf_counter() - start:.1f}s, "
        f"RMS to a 10× tighter one {rms(ref, ref_check):.2e}"
    )

    rows: list[dict[str, Any]] = []
    for nfe in budgets:
        for name in OURS:
            steps = steps_for(name, nfe)
            for schedule in SCHEDULES:
                rho = (
                    7.0
                    if schedule == "karras"
                    else math.inf
                    if schedule == "logsnr"
                    else tune_rho(name, nfe, denoise, pilot, pilot_ref, rhos)
                )
                grid = schedule_grid(rho, steps)
                used = multistep.SAMPLERS[0].nfe(grid) if name not in ("heun",) else 2 * steps - 1  # type: ignore[misc]
                x = run_ours(name, denoise, x0, grid)
                rows.append(
                    dict(
                        library="physgen",
                        method=name,
                        schedule=schedule,
                        rho=rho,
                        budget=nfe,
                        nfe=used,
                        error=rms(x, ref),
                    )
                )
    peers: dict[str, str] = {}
    kd = None
    try:
        kd = import_k_diffusion_sampling()
    except ImportError as err:
        peers["k-diffusion"] = f"not importable ({err})"
    if kd is None:
        peers.setdefault("k-diffusion", "not installed")
    else:
        peers["k-diffusion"] = importlib.metadata.version("k-diffusion")
    try:
        import diffusers

        peers["diffusers"] = diffusers.__version__
    except ImportError:
        peers["diffusers"] = "not installed"
    for nfe in budgets:
        runs: dict[str, tuple[int, Tensor]] = {}
        if kd is not None:
            runs.update(k_diffusion_runs(kd, denoise, x0, nfe))
        if not peers["diffusers"].startswith("not"):
            runs.update(diffusers_runs(denoise, x0, nfe))
        for label, (used, x) in runs.items():
            library, method, schedule = (
                label.split(" ", 1)[0],
                label.split(" ", 1)[1].rsplit(" ", 1)[0],
                label.rsplit(" ", 1)[1],
            )
            rows.append(
                dict(
                    library=library,
                    method=method,
                    schedule=schedule,
                    rho=float("nan"),
                    budget=nfe,
                    nfe=used,
                    error=rms(x, ref),
                )
            )
    for key, value in peers.items():
        print(f"{key}: {value}")
    table, summary = markdown(rows, budgets)
    print(table)
    print()
    print(summary)
    write(args, rows, peers, table, summary, budgets)


def markdown(rows: list[dict[str, Any]], budgets: list[int]) -> tuple[str, str]:
    """One row per (library, method, schedule), one column per budget (NFE used when it
    differs), then the best of physgen vs the best peer per budget."""
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
            cell = f"{r['error']:.2e}"
            if r["nfe"] != b:
                cell += f" ({r['nfe']})"
            if r["schedule"] == "tuned":
                cell += f" ρ={r['rho']:g}"
            cells.append(cell)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    summary = [
        "| NFE | best physgen | error | best peer | error | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for b in budgets:
        ours = min(
            (r for r in rows if r["budget"] == b and r["library"] == "physgen"),
            key=lambda r: r["error"],
        )
        mine = f"| {b} | {ours['method']} {ours['schedule']} | {ours['error']:.2e}"
        theirs = [r for r in rows if r["budget"] == b and r["library"] != "physgen"]
        if not theirs:
            summary.append(mine + " | (no peers) | | |")
            continue
        best = min(theirs, key=lambda r: r["error"])
        peer = f"{best['library']} {best['method']} {best['schedule']} | {best['error']:.2e}"
        summary.append(f"{mine} | {peer} | {ours['error'] / best['error']:.3f} |")
    return "\n".join(lines), "\n".join(summary)


def write(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    peers: dict[str, str],
    table: str,
    summary: str,
    budgets: list[int],
) -> None:
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.parent.mkdir(parents=True, exist_ok=True)

    def writer(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["command"] = " ".join(sys.argv)
            f.attrs["options"] = json.dumps({k: str(v) for k, v in vars(args).items()})
            f.attrs["versions"] = json.dumps(
                {
                    "physgen": physgen_version(),
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                    **peers,
                }
            )
            f.attrs["table"] = table
            f.attrs["summary"] = summary
            for i, r in enumerate(rows):
                g = f.create_group(f"runs/{i:04d}")
                for k, v in r.items():
                    g.attrs[k] = v

    atomic_write(args.out, writer)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for library, style in (("physgen", "-"), ("k-diffusion", "--"), ("diffusers", ":")):
        methods = dict.fromkeys(r["method"] for r in rows if r["library"] == library)
        for method in methods:
            # each method at its best schedule per budget
            best = [
                min(
                    (
                        r
                        for r in rows
                        if r["library"] == library and r["method"] == method and r["budget"] == b
                    ),
                    key=lambda r: r["error"],
                )
                for b in budgets
            ]
            ax.loglog(
                [r["nfe"] for r in best],
                [r["error"] for r in best],
                style,
                marker="o",
                ms=3,
                label=f"{library} {method}",
            )
    ax.set_xlabel("NFE")
    ax.set_ylabel("per-dim RMS error vs dopri5")
    ax.set_title(f"GMM d={args.dim}, K={args.components}, std={args.std}; best schedule per point")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    atomic_write(args.out.with_suffix(".png"), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
