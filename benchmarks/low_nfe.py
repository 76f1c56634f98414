"""Low-NFE samplers: physgen's multistep solvers and σ-schedules against k-diffusion and
diffusers, all driving the same exact denoiser (issue 9).

Problem: an isotropic Gaussian mixture in R^d (``--dim`` 32, ``--components`` 12, std
``--std`` 0.07, means ~ N(0, 0.5² I) so σ_data ≈ 0.5), whose denoiser is closed form
(:class:`physgen.oracles.GaussianMixture`, math.md §6), on EDM's range σ ∈ [0.002, 80]. Every
sampler starts from the same prior draws ``x ~ N(0, 80² I)`` and ends at σ = 0, where each one
returns ``D(x; σ_min)`` (its step into σ = 0). The reference is the same map computed tightly:
float64 dopri5 (rtol = atol = ``--ref-tol`` 1e-8) from 80 to 0.002, then ``D(·; 0.002)``.

Error statistics, per run over the test draws: ``rms`` (per-dimension RMS distance to the
reference over all draws), the per-sample RMS distance's ``median`` and ``q90``, and
``switches`` (draws whose nearest mixture mean differs from the reference's). A few
trajectories pass near a boundary between components, where the flow splits them (chaotic,
not a reference defect: dopri5 at 1e-6…1e-12 agrees to 1e-7 and fine-grid samplers converge to
it); one such draw ending in the other component costs ~0.7/√n in ``rms``, so at ≥ 20 NFE the
RMS counts switches, not discretisation error. The goal (issue 9) is judged on the ``median``,
the typical draw's discretisation error, the same statistic for every library; the other
columns are reported beside it.

NFE budgets (``--budgets`` 6,10,20,35) are matched exactly: one denoiser call per step for
Euler, LMS, DPM-Solver++(2M/3M), UniPC, iPNDM and diffusers' schedulers (``steps = NFE``);
Heun (EDM Algorithm 1) spends ``2·steps − 1``, so it runs with the largest odd NFE ≤ budget
(5, 9, 19, 35) and is listed with the NFE it used.

Schedules: physgen's solvers run on ``karras`` (ρ = 7, the peers' default), ``logsnr``,
``tuned``: karras with ρ chosen per (solver, NFE) from ``--rhos`` (∞ = logsnr), and
``fitted`` (multistep solvers): the ``knots`` schedule with ``--n-knots`` knots optimised by
:func:`physgen.solvers.grids.fit_knots` (Nelder–Mead from the tuned ρ), stored in the table.
Both choices minimise the median error on a separate *pilot* set of prior draws
(``--pilot-seed``, its own dopri5 reference); the test draws (``--seed``) are never looked at
for them. The multistep solvers also run with ``afs`` (analytical first step, ``D = 0`` at
σ_max): one more interval for the same NFE; NFE is counted and checked against the solver's
declared count. Peers run with their own schedules:
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
MULTISTEP = {s.name: s for s in multistep.SAMPLERS}
SCHEDULES = ("karras", "logsnr", "tuned", "fitted")
#: the statistic the goal is judged on (module docstring) and the pilot choices minimise
GOAL = "median"


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
    p.add_argument("--n-knots", type=int, default=6, help="fitted: knots per schedule")
    p.add_argument("--fit-evals", type=int, default=300, help="fitted: Nelder–Mead evaluations")
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


def median_error(x: Tensor, ref: Tensor) -> float:
    return float((x - ref).pow(2).mean(1).sqrt().median())


def statistics(x: Tensor, ref: Tensor, means: Tensor) -> dict[str, float]:
    """``rms``, per-sample ``median`` and ``q90``, and component ``switches`` vs ``ref``."""
    per_sample = (x - ref).pow(2).mean(1).sqrt()
    nearest = torch.cdist(torch.stack([x, ref]), means.expand(2, *means.shape)).argmin(-1)
    return dict(
        rms=rms(x, ref),
        median=float(per_sample.median()),
        q90=float(per_sample.quantile(0.9)),
        switches=int((nearest[0] != nearest[1]).sum()),
    )


# -- physgen -----------------------------------------------------------------------------------


def steps_for(name: str, nfe: int, afs: bool = False) -> int:
    """Grid intervals (ending at σ = 0) that spend at most ``nfe`` evaluations."""
    return (nfe + 1) // 2 if name == "heun" else nfe + int(afs)


def run_ours(
    name: str, denoise: Denoiser, x0: Tensor, grid: Tensor, afs: bool = False
) -> tuple[int, Tensor]:
    """(NFE counted, samples); a multistep solver's count must equal its declared one."""
    f = CountedFn(denoise)
    if name in ("euler", "heun"):
        field = DenoiserView(f, None, None).as_ode().field  # type: ignore[arg-type]
        return f.nfe, getattr(ode, name)(field, x0, grid)
    x = getattr(multistep, name)(f, x0, grid, afs=afs)
    declared = MULTISTEP[name].nfe(grid, afs=afs)  # type: ignore[misc]
    assert f.nfe == declared, (name, afs, f.nfe, declared)
    return f.nfe, x


def schedule_grid(rho: float, steps: int) -> Tensor:
    if math.isinf(rho):
        return grids.logsnr(steps, SIGMA_MIN, SIGMA_MAX)
    return grids.karras(steps, SIGMA_MIN, SIGMA_MAX, rho=rho)


def tune_rho(
    name: str,
    steps: int,
    afs: bool,
    denoise: Denoiser,
    pilot: Tensor,
    pilot_ref: Tensor,
    rhos: list[float],
) -> float:
    """The ρ with the smallest pilot median error (ties: the first)."""
    errors = [
        median_error(run_ours(name, denoise, pilot, schedule_grid(r, steps), afs)[1], pilot_ref)
        for r in rhos
    ]
    return rhos[int(np.argmin(errors))]


def fit_schedule(
    name: str,
    steps: int,
    afs: bool,
    rho: float,
    denoise: Denoiser,
    pilot: Tensor,
    pilot_ref: Tensor,
    args: argparse.Namespace,
) -> list[float]:
    """Knots minimising the pilot median error, started from the karras(ρ) grid's knots."""
    n_knots = min(args.n_knots, steps)
    levels = schedule_grid(rho, n_knots)[:-1]
    init = (math.log(SIGMA_MAX) - levels.log()) / math.log(SIGMA_MAX / SIGMA_MIN)
    init[0], init[-1] = 0.0, 1.0  # exact ends, whatever the logs round to

    def error(grid: Tensor) -> float:
        return median_error(run_ours(name, denoise, pilot, grid, afs)[1], pilot_ref)

    return grids.fit_knots(
        error,
        steps,
        SIGMA_MIN,
        SIGMA_MAX,
        n_knots=n_knots,
        init=init.tolist(),
        max_evals=args.fit_evals,
    )


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

    means = gmm.means
    rows: list[dict[str, Any]] = []
    for nfe in budgets:
        for name in OURS:
            for afs in (False, True) if name in MULTISTEP else (False,):
                steps = steps_for(name, nfe, afs)
                for schedule in SCHEDULES:
                    if schedule == "fitted" and name not in MULTISTEP:
                        continue
                    rho, knots = math.inf, ""
                    if schedule == "karras":
                        rho = 7.0
                    elif schedule in ("tuned", "fitted"):
                        rho = tune_rho(name, steps, afs, denoise, pilot, pilot_ref, rhos)
                    grid = schedule_grid(rho, steps)
                    if schedule == "fitted":
                        fitted = fit_schedule(
                            name, steps, afs, rho, denoise, pilot, pilot_ref, args
                        )
                        knots = ",".join(f"{u:g}" for u in fitted)
                        grid = grids.knots(steps, SIGMA_MIN, SIGMA_MAX, knots=knots)
                    used, x = run_ours(name, denoise, x0, grid, afs)
                    rows.append(
                        dict(
                            library="physgen",
                            method=name + (" afs" if afs else ""),
                            schedule=schedule,
                            rho=rho,
                            knots=knots,
                            budget=nfe,
                            nfe=used,
                            **statistics(x, ref, means),
                        )
                    )
        print(f"physgen NFE {nfe}: {time.perf_counter() - start:.0f}s", flush=True)
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
                    knots="",
                    budget=nfe,
                    nfe=used,
                    **statistics(x, ref, means),
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
    """One row per (library, method, schedule), one column per budget: ``median · rms ·
    switches`` (NFE used when it differs from the budget); then, per budget, the best physgen
    run vs the best peer run on each statistic, the goal's (``median``) first."""
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
    for b in budgets:
        for stat in (GOAL, "q90", "rms", "switches"):
            ours = min(
                (r for r in rows if r["budget"] == b and r["library"] == "physgen"),
                key=lambda r: r[stat],
            )
            mine = f"| {b} | {stat} | {ours['method']} {ours['schedule']} | {ours[stat]:.3g}"
            theirs = [r for r in rows if r["budget"] == b and r["library"] != "physgen"]
            if not theirs:
                summary.append(mine + " | (no peers) | | |")
                continue
            best = min(theirs, key=lambda r: r[stat])
            peer = f"{best['library']} {best['method']} {best['schedule']} | {best[stat]:.3g}"
            ratio = ours[stat] / best[stat] if best[stat] else float("nan")
            summary.append(f"{mine} | {peer} | {ratio:.3f} |")
    for b in budgets:  # the goal's best physgen runs, reproducible from their knots
        ours = min(
            (r for r in rows if r["budget"] == b and r["library"] == "physgen"),
            key=lambda r: r[GOAL],
        )
        if ours["knots"]:
            summary.append(
                f"\nNFE {b}: {ours['method']} on `schedule='knots'`, "
                f"`knots='{ours['knots']}'` ({ours['nfe'] + ('afs' in ours['method'])} intervals)"
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
                    key=lambda r: r[GOAL],
                )
                for b in budgets
            ]
            ax.loglog(
                [r["nfe"] for r in best],
                [r[GOAL] for r in best],
                style,
                marker="o",
                ms=3,
                label=f"{library} {method}",
            )
    ax.set_xlabel("NFE")
    ax.set_ylabel("median over draws of the per-dim RMS error vs dopri5")
    ax.set_title(f"GMM d={args.dim}, K={args.components}, std={args.std}; best schedule per point")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    atomic_write(args.out.with_suffix(".png"), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
