"""The peers of ``benchmarks/low_nfe.py``: k-diffusion's and diffusers' deterministic EDM
samplers on their own schedules, driving the same float64 denoiser as physgen's solvers.

Peers are optional (``not installed`` otherwise). Installing them into the project venv would
replace torch, so they live in a side venv that sees the project's packages::

    python -m venv --system-site-packages /work/venv-peers
    echo "import site; site.addsitedir('/work/venv/lib/python3.11/site-packages')" \\
        > /work/venv-peers/lib/python3.11/site-packages/zz_work_venv.pth
    /work/venv-peers/bin/pip install --no-deps k-diffusion diffusers torchsde trampoline
    /work/venv-peers/bin/pip install huggingface_hub regex importlib_metadata

``k_diffusion/__init__`` imports its training modules (torchvision, clip, wandb, …);
:func:`import_k_diffusion_sampling` imports only ``k_diffusion.sampling`` (and ``utils``,
which needs ``torchvision.transforms.functional`` at import time only: stubbed when absent).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from physgen.core.process import CountedFn

F64 = torch.float64
Denoiser = Callable[[Tensor, Tensor], Tensor]
#: (library, method, schedule) -> (NFE counted, samples)
Runs = dict[tuple[str, str, str], tuple[int, Tensor]]


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
    kd: types.ModuleType,
    denoise: Denoiser,
    x0: Tensor,
    nfe: int,
    sigma_min: float,
    sigma_max: float,
) -> Runs:
    """k-diffusion's deterministic EDM samplers on its karras and exponential schedules; Heun
    runs ``(nfe + 1) // 2`` steps (``2·steps − 1`` NFE), the others ``nfe``."""
    samplers: dict[str, tuple[Callable[..., Tensor], dict[str, Any]]] = {
        "euler": (kd.sample_euler, {}),
        "heun": (kd.sample_heun, {}),
        "lms": (kd.sample_lms, {}),
        "dpmpp_2m": (kd.sample_dpmpp_2m, {}),
        "dpmpp_2m_sde(eta=0)": (kd.sample_dpmpp_2m_sde, {"eta": 0.0}),
        "dpmpp_3m_sde(eta=0)": (kd.sample_dpmpp_3m_sde, {"eta": 0.0}),
    }
    out: Runs = {}
    for schedule, make in (
        ("karras", kd.get_sigmas_karras),
        ("exponential", kd.get_sigmas_exponential),
    ):
        for name, (fn, kwargs) in samplers.items():
            steps = (nfe + 1) // 2 if name == "heun" else nfe
            sigmas = make(steps, sigma_min, sigma_max).to(F64)  # steps levels + 0
            model = CountedFn(denoise)
            x = fn(model, x0.clone(), sigmas, disable=True, **kwargs)
            out["k-diffusion", name, schedule] = (model.nfe, x)
    return out


def diffusers_runs(denoise: Denoiser, x0: Tensor, nfe: int) -> Runs:
    """diffusers' EDM schedulers (their default σ ∈ [0.002, 80]): the network output is what
    their preconditioning turns into our denoiser, ``F = (D − c_skip x)/c_out``, read off their
    own ``precondition_outputs``."""
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
    out: Runs = {}
    for schedule in ("karras", "exponential"):
        for name, make in makers.items():
            scheduler = make(schedule)
            scheduler.set_timesteps(nfe)
            x, count = x0.clone(), 0
            for t in scheduler.timesteps:
                scheduler.scale_model_input(x, t)  # sets the step index; x stays unscaled
                sigma = scheduler.sigmas[scheduler.step_index].to(F64)
                d = denoise(x, sigma)
                count += 1
                skip = scheduler.precondition_outputs(x, torch.zeros_like(x), sigma)
                c_out = scheduler.precondition_outputs(x, torch.ones_like(x), sigma) - skip
                x = scheduler.step((d - skip) / c_out, t, x).prev_sample
            out["diffusers", name, schedule] = (count, x)
    return out


def peer_runs(
    denoise: Denoiser,
    x0: Tensor,
    budgets: list[int],
    sigma_min: float,
    sigma_max: float,
) -> tuple[dict[str, str], dict[int, Runs]]:
    """(peer versions or why absent, per budget the runs of every peer that is installed)."""
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
    runs: dict[int, Runs] = {}
    for nfe in budgets:
        runs[nfe] = {}
        if kd is not None:
            runs[nfe].update(k_diffusion_runs(kd, denoise, x0, nfe, sigma_min, sigma_max))
        if not peers["diffusers"].startswith("not"):
            runs[nfe].update(diffusers_runs(denoise, x0, nfe))
    return peers, runs
