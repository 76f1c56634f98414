"""Likelihood against closed forms: physgen vs flow_matching and k-diffusion at equal NFE, and
physgen's Hutchinson estimators against one plain probe at equal VJPs (issue 19).

Problems (float64, EDM range σ ∈ [0.002, 80] unless stated; every library gets the same field,
the same points and the exact prior density, so only the integrator and the trace differ):

* ``gaussian``: ``N(μ, s² I)`` in R^16, s = 0.5; ``log p_{σ_min} = log N(μ, (s² + σ_min²) I)``.
* ``mixture``: a 5-component isotropic mixture in R^8
  (:class:`physgen.testing.oracles.GaussianMixture`); the density at σ_min is the mixture with
  variances ``s_k² + σ_min²``.
* ``fm-gaussian``: the linear flow-matching path (t: 0 prior → 1 data) to ``N(μ, s² I)`` in
  R^8, flow_matching's own setting; exact ``log N(μ, s² I)`` at t = 1.

Exact trace, tolerance sweep (``--tols``): physgen ``dopri5``/``dopri8``; flow_matching's
``ODESolver.compute_likelihood`` (``exact_divergence=True``) with ``dopri5``/``dopri8``, on a
σ-problem through ``σ(t) = σ_max + (σ_min − σ_max) t`` (its time must run 1 → 0); k-diffusion's
``sampling.log_likelihood`` (one Rademacher probe, dopri5; exact on ``gaussian``, whose Jacobian
is a multiple of I), its N(0, σ_max²) prior swapped for the exact one through the latent it
returns. NFE: field evaluations, counted by a wrapper in every library. Equal-NFE ratio: each
physgen point's MAE over the peer's MAE log-log interpolated at the same NFE (best peer method).

Hutchinson (``--hutch-problems``): MAE per dim of one plain Rademacher probe (1 VJP per
evaluation), ``M`` plain probes and Hutch++ with ``M = 2·sketch + probes`` VJPs; ``rmsz``: RMS of
error/SE (1 when the standard error is honest), ``cover2``: share of |error| ≤ 2 SE.

Peers live in a side venv (see ``_low_nfe_peers.py``)::

    python3 -m venv --system-site-packages /work/venv-G
    echo "import site; site.addsitedir('/work/venv/lib/python3.11/site-packages')" \\
        > /work/venv-G/lib/python3.11/site-packages/zz_work_venv.pth
    /work/venv-G/bin/pip install --no-deps flow_matching k-diffusion torchsde trampoline
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_header
from _low_nfe_peers import import_k_diffusion_sampling
from torch import Tensor

from physgen.core.process import DenoiserView, ODEView, gaussian_prior, karras_sigmas
from physgen.io import atomic_write
from physgen.sampling.likelihood import log_likelihood
from physgen.testing.oracles import GaussianMixture

F64 = torch.float64
SMIN, SMAX = 0.002, 80.0


class Problem:
    """A view, test points and their exact log-density; ``denoise`` is None for flow matching."""

    def __init__(self, name: str, view: ODEView, x: Tensor, exact: Tensor, denoise: Any = None):
        self.name, self.view, self.x, self.exact, self.denoise = name, view, x, exact, denoise
        self.n_dims = x.shape[1]

    def mae(self, logp: Tensor) -> float:
        """Mean absolute error per dimension, nats."""
        return float((logp - self.exact).abs().mean()) / self.n_dims


def _sigma_view(denoise: Callable, prior_logp: Callable) -> ODEView:
    return DenoiserView(
        denoise=denoise,
        sigmas=lambda steps: karras_sigmas(steps, SMIN, SMAX),
        prior=gaussian_prior(SMAX),
        prior_logp=prior_logp,
    ).as_ode()


def mixture(n_dims: int, k: int, lo: float, hi: float, seed: int, n: int) -> Problem:
    g = torch.Generator().manual_seed(seed)
    weights = 0.5 + torch.rand(k, generator=g, dtype=F64)
    means = torch.randn(k, n_dims, generator=g, dtype=F64)
    gmm = GaussianMixture(weights, means, lo + (hi - lo) * torch.rand(k, generator=g, dtype=F64))

    def smoothed(sigma: float) -> GaussianMixture:
        return GaussianMixture(gmm.weights, gmm.means, (gmm.stds**2 + sigma**2).sqrt())

    x = gmm.sample(n, generator=g)
    view = _sigma_view(gmm.denoise, smoothed(SMAX).log_prob)
    return Problem(f"mixture{n_dims}", view, x, smoothed(SMIN).log_prob(x), gmm.denoise)


def gaussian(n_dims: int, s: float, seed: int, n: int) -> Problem:
    """Isotropic Gaussian data: a one-component mixture."""
    g = torch.Generator().manual_seed(seed)
    gmm = GaussianMixture(torch.ones(1, dtype=F64), torch.randn(1, n_dims, generator=g, dtype=F64),
                          torch.full((1,), s, dtype=F64))  # fmt: skip
    x = gmm.sample(n, generator=g)

    def smoothed(sigma: float) -> GaussianMixture:
        return GaussianMixture(gmm.weights, gmm.means, (gmm.stds**2 + sigma**2).sqrt())

    view = _sigma_view(gmm.denoise, smoothed(SMAX).log_prob)
    return Problem(f"gaussian{n_dims}", view, x, smoothed(SMIN).log_prob(x), gmm.denoise)


def rotated_gaussian(n_dims: int, seed: int, n: int) -> Problem:
    """``N(μ, U diag(λ) Uᵀ)``, λ log-spaced in [1e-3, 1], U random: a non-diagonal Jacobian."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(n_dims, n_dims, generator=g, dtype=F64)).Q
    lam = torch.logspace(-3, 0, n_dims, dtype=F64)
    mu = torch.randn(n_dims, generator=g, dtype=F64)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        gain = u @ torch.diag_embed(lam / (lam + sigma[:, None] ** 2)) @ u.T
        return mu + (gain @ (x - mu)[..., None])[..., 0]

    def mvn(var: float) -> torch.distributions.MultivariateNormal:
        cov = u @ torch.diag(lam + var) @ u.T
        return torch.distributions.MultivariateNormal(mu, covariance_matrix=cov)

    x = mu + (torch.randn(n, n_dims, generator=g, dtype=F64) * lam.sqrt()) @ u.T
    view = _sigma_view(denoise, mvn(SMAX**2).log_prob)
    return Problem(f"rotated{n_dims}", view, x, mvn(SMIN**2).log_prob(x), denoise)


def fm_gaussian(n_dims: int, s: float, seed: int, n: int) -> Problem:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n_dims, generator=g, dtype=F64)

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        # marginal N(t μ, v_t I), v_t = (1 − t)² + t² s²: the velocity that preserves it
        t = torch.as_tensor(t, dtype=x.dtype)
        v = (1 - t) ** 2 + t**2 * s**2
        return mu + (t * s**2 - (1 - t)) / v * (x - t * mu)

    std = torch.distributions.Normal(torch.zeros(n_dims, dtype=F64), 1.0)
    view = ODEView(
        field=velocity,
        grid=lambda steps: torch.linspace(0, 1, steps + 1, dtype=F64),
        prior=gaussian_prior(1.0),
        prior_logp=lambda z: std.log_prob(z).sum(-1),
    )
    x = mu + s * torch.randn(n, n_dims, generator=g, dtype=F64)
    exact = torch.distributions.Normal(mu, s).log_prob(x).sum(-1)
    return Problem(f"fm-gaussian{n_dims}", view, x, exact)


# -- the peers ----------------------------------------------------------------------------


def _flow_matching_solver() -> Any:
    """``flow_matching.solver.ODESolver``; this folder's ``flow_matching.py`` (a benchmark)
    would shadow the package, so the import looks past it."""
    here = str(Path(__file__).resolve().parent)
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if p not in ("", here) and Path(p).resolve() != Path(here)]
    try:
        return importlib.import_module("flow_matching.solver").ODESolver
    finally:
        sys.path[:] = saved


def flow_matching_run(problem: Problem, method: str, tol: float) -> tuple[int, float]:
    ODESolver = _flow_matching_solver()

    calls = [0]
    sigma_problem = problem.denoise is not None

    class Velocity(torch.nn.Module):
        def forward(self, x: Tensor, t: Tensor) -> Tensor:
            calls[0] += 1
            if not sigma_problem:
                return problem.view.field(x, t)
            sigma = SMAX + (SMIN - SMAX) * torch.as_tensor(t, dtype=F64)  # t = 1: data
            return problem.view.field(x, sigma) * (SMIN - SMAX)

    _, logp = ODESolver(velocity_model=Velocity()).compute_likelihood(
        problem.x,
        problem.view.prior_logp,
        step_size=None,
        method=method,
        atol=tol,
        rtol=tol,
        time_grid=torch.tensor([1.0, 0.0], dtype=F64),
        exact_divergence=True,
    )
    return calls[0], problem.mae(logp)


def k_diffusion_run(kd: Any, problem: Problem, tol: float) -> tuple[int, float]:
    latent: list[Tensor] = []
    odeint = kd.odeint

    def capture(*args: Any, **kwargs: Any) -> Any:  # the latent, to swap in the exact prior
        sol = odeint(*args, **kwargs)
        latent.append(sol[0][-1])
        return sol

    kd.odeint = capture
    try:
        ll, info = kd.log_likelihood(problem.denoise, problem.x, SMIN, SMAX, atol=tol, rtol=tol)
    finally:
        kd.odeint = odeint
    z = latent[0]
    ll = ll - torch.distributions.Normal(0, SMAX).log_prob(z).flatten(1).sum(1)
    ll = ll + problem.view.prior_logp(z)  # type: ignore[misc]
    return int(info["fevals"]), problem.mae(ll)


# -- the sweeps ---------------------------------------------------------------------------


def exact_rows(problems: list[Problem], tols: list[float], kd: Any) -> list[dict[str, Any]]:
    rows = []
    for p in problems:
        for tol in tols:
            for method in ("dopri5", "dopri8"):
                r = log_likelihood(p.view, p.x, method=method, rtol=tol, atol=tol)
                rows.append(dict(problem=p.name, library="physgen", method=method, tol=tol,
                                 nfe=r.nfe, mae=p.mae(r.logp)))  # fmt: skip
                try:
                    nfe, mae = flow_matching_run(p, method, tol)
                except ImportError:
                    continue
                rows.append(dict(problem=p.name, library="flow_matching", method=method,
                                 tol=tol, nfe=nfe, mae=mae))  # fmt: skip
            if kd is not None and p.denoise is not None:
                nfe, mae = k_diffusion_run(kd, p, tol)
                rows.append(dict(problem=p.name, library="k-diffusion", method="dopri5 hutch-1",
                                 tol=tol, nfe=nfe, mae=mae))  # fmt: skip
        print(f"{p.name}: exact-trace sweep done", flush=True)
    return rows


def equal_nfe_ratios(rows: list[dict[str, Any]], peer: str) -> dict[str, list[float]]:
    """Per problem: physgen's best MAE at each of its NFEs over ``peer``'s best, log-log
    interpolated at that NFE (points outside the peer's NFE range are skipped)."""
    out: dict[str, list[float]] = {}
    for problem in dict.fromkeys(r["problem"] for r in rows):

        def frontier(lib: str, problem: str = problem) -> tuple[np.ndarray, np.ndarray]:
            pts = sorted((r["nfe"], r["mae"]) for r in rows
                         if r["problem"] == problem and r["library"] == lib)  # fmt: skip
            best, nfes, maes = math.inf, [], []
            for nfe, mae in pts:  # the lower envelope: best MAE at ≤ this NFE
                best = min(best, mae)
                nfes.append(nfe)
                maes.append(best)
            return np.log(nfes), np.log(maes)

        ours, theirs = frontier("physgen"), frontier(peer)
        if not len(theirs[0]):
            continue
        inside = (ours[0] >= theirs[0].min()) & (ours[0] <= theirs[0].max())
        peer_at = np.interp(ours[0][inside], *theirs)
        out[problem] = np.exp(ours[1][inside] - peer_at).tolist()
    return out


def hutch_rows(problems: list[Problem], budgets: list[int], seeds: int) -> list[dict[str, Any]]:
    """Plain probes vs Hutch++ at equal VJPs per evaluation, ``seeds`` probe draws each."""
    rows = []
    for p in problems:
        configs: list[tuple[str, int, int | None]] = [("hutchinson-rademacher", 1, None)]
        for m in budgets:
            configs.append(("hutchinson-rademacher", m, None))
            for sketch in range(1, (m - 1) // 2 + 1):
                configs.append(("hutch++", m - 2 * sketch, sketch))
        for divergence, probes, sketch in configs:
            errs, zs, vjps = [], [], 0
            for seed in range(seeds):
                g = torch.Generator().manual_seed(seed)
                r = log_likelihood(
                    p.view,
                    p.x,
                    divergence=divergence,
                    hutchinson_samples=probes,
                    sketch_size=sketch,
                    generator=g,
                    rtol=1e-6,
                    atol=1e-6,
                )
                err = r.logp - p.exact
                errs.append(err)
                if r.stderr is not None:
                    zs.append(err / r.stderr)
                vjps = round(r.vjps / r.nfe)
            err = torch.cat(errs)
            row = dict(problem=p.name, divergence=divergence, probes=probes, sketch=sketch or 0,
                       vjps=vjps, mae=float(err.abs().mean()) / p.n_dims)  # fmt: skip
            if zs:
                z = torch.cat(zs)
                row.update(
                    rmsz=float(z.pow(2).mean().sqrt()), cover2=float((z.abs() <= 2).double().mean())
                )
            rows.append(row)
        print(f"{p.name}: Hutchinson sweep done", flush=True)
    return rows


def report(exact: list[dict[str, Any]], hutch: list[dict[str, Any]]) -> str:
    lines = ["exact trace: problem library method tol NFE MAE/dim"]
    for r in exact:
        lines.append(f"  {r['problem']:14s} {r['library']:13s} {r['method']:14s} "
                     f"{r['tol']:.0e} {r['nfe']:5d} {r['mae']:.2e}")  # fmt: skip
    for peer in ("flow_matching", "k-diffusion"):
        for problem, ratios in equal_nfe_ratios(exact, peer).items():
            if ratios:
                lines.append(f"equal-NFE MAE ratio physgen/{peer} on {problem}: median "
                             f"{np.median(ratios):.2f}, worst {max(ratios):.2f} "
                             f"({len(ratios)} points)")  # fmt: skip
    lines.append(
        "Hutchinson: problem estimator probes sketch VJPs/eval MAE/dim (×1-probe) rmsz cover2"
    )
    for r in hutch:
        one = next(h["mae"] for h in hutch if h["problem"] == r["problem"] and h["vjps"] == 1)
        lines.append(f"  {r['problem']:10s} {r['divergence']:22s} {r['probes']:2d} "
                     f"{r['sketch']:2d} "
                     f"{r['vjps']:3d} {r['mae']:.2e} ({one / r['mae']:5.1f}×) "
                     f"{r.get('rmsz', math.nan):.2f} {r.get('cover2', math.nan):.2f}")  # fmt: skip
    return "\n".join(lines)


def write(args: argparse.Namespace, exact: list, hutch: list, text: str, versions: dict) -> None:
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.parent.mkdir(parents=True, exist_ok=True)

    def writer(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            write_header(f, args, **versions)
            f.attrs["report"] = text
            for name, rows in (("exact", exact), ("hutchinson", hutch)):
                for i, r in enumerate(rows):
                    g = f.create_group(f"{name}/{i:04d}")
                    for k, v in r.items():
                        g.attrs[k] = v

    atomic_write(args.out, writer)
    problems = list(dict.fromkeys(r["problem"] for r in exact))
    hproblems = list(dict.fromkeys(r["problem"] for r in hutch))
    fig, axes = plt.subplots(
        1, len(problems) + len(hproblems), figsize=(5 * (len(problems) + len(hproblems)), 4.5)
    )
    styles = {"physgen": "-", "flow_matching": "--", "k-diffusion": ":"}
    for ax, problem in zip(axes, problems, strict=False):
        for lib, style in styles.items():
            for method in dict.fromkeys(r["method"] for r in exact if r["library"] == lib):
                pts = sorted(
                    (r["nfe"], r["mae"])
                    for r in exact
                    if (r["problem"], r["library"], r["method"]) == (problem, lib, method)
                )
                if pts:
                    ax.loglog(
                        *zip(*pts, strict=True), style, marker="o", ms=3, label=f"{lib} {method}"
                    )
        ax.set(title=f"{problem}: exact trace", xlabel="NFE", ylabel="MAE vs closed form, nats/dim")
        ax.legend(fontsize=7)
    for ax, problem in zip(axes[len(problems) :], hproblems, strict=False):
        for div, marker in (("hutchinson-rademacher", "o"), ("hutch++", "s")):
            pts = [
                (r["vjps"], r["mae"])
                for r in hutch
                if r["problem"] == problem and r["divergence"] == div
            ]
            ax.loglog(*zip(*pts, strict=True), marker, label=div)
        ax.set(title=f"{problem}: Hutchinson", xlabel="VJPs per evaluation", ylabel="MAE, nats/dim")
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(args.out.with_suffix(".png"), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/likelihood.h5"))
    p.add_argument("--n", type=int, default=64, help="test points per problem")
    p.add_argument("--tols", default="1e-3,1e-4,1e-5,1e-6,1e-7")
    p.add_argument("--vjps", default="4,8,12", help="Hutchinson: VJPs per evaluation")
    p.add_argument("--seeds", type=int, default=4, help="Hutchinson: probe draws")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    problems = [gaussian(16, 0.5, 0, args.n), mixture(8, 5, 0.2, 0.5, 1, args.n),
                fm_gaussian(8, 0.4, 2, args.n)]  # fmt: skip
    kd = import_k_diffusion_sampling()
    versions = {}
    for name in ("flow_matching", "k-diffusion", "torchdiffeq"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    print(json.dumps(versions))
    exact = exact_rows(problems, [float(t) for t in args.tols.split(",")], kd)
    hproblems = [mixture(8, 5, 0.2, 0.5, 1, 32), mixture(32, 8, 0.05, 0.3, 3, 32),
                 rotated_gaussian(32, 4, 32)]  # fmt: skip
    hutch = hutch_rows(hproblems, [int(v) for v in args.vjps.split(",")], args.seeds)
    text = report(exact, hutch)
    print(text)
    write(args, exact, hutch, text, versions)


if __name__ == "__main__":
    main()
