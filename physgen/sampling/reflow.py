"""Reflow pairs and straightness for any process with an ODE view (Liu, Gong, Liu 2023,
"Flow Straight and Fast"; docs/math.md §8).

Reflow replaces the independent coupling by the pairs ``(z, ODE(z))`` of a trained model and
trains a new flow on them; each round straightens the paths. Here:

* :func:`generate_pairs` integrates the ODE of *any* process (EDM, VP, PFGM++, flow matching)
  with a deterministic sampler through :func:`physgen.sampling.sample`, and returns the prior
  draws with their end points. Noise ``z`` is stored in the student's frame: when the teacher's
  prior is ``N(0, s² I)`` (EDM: ``s = σ_max``), ``z`` is the standard normal draw (its prior
  state divided by ``s``); otherwise (a dataset source) it is the prior state itself.
* :func:`save_pairs` / :func:`load_pairs` keep them in one file (``.npz`` or ``.h5``), written
  atomically: ``x`` (the data half, read by :func:`physgen.data.load_dataset` as the dataset),
  ``z`` and ``meta`` (JSON: teacher, sampler, NFE, seed, ``z_law``).
* :func:`reflow_dataset` does both from a checkpoint. A process that trains on reflow pairs
  declares an option ``pairs`` (the file); ``physgen train --reflow-from CKPT`` writes the file
  into the run directory and trains on its data half with ``-o pairs=FILE`` (the flow plugin's
  ``rectified`` pairs each data row with its stored ``z``).
* :func:`straightness` measures ``S = ∫_0^1 E||(x_1 − x_0) − v(x_t, t)||² dt`` along a model's
  own trajectories (Liu et al. 2023, the straightness ``S(Z)`` of a flow).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from physgen.core.process import ODEView, PriorFn, Process
from physgen.core.rng import StackedGenerator, randn
from physgen.errors import ConfigError, DataError
from physgen.registry import process_view

__all__ = [
    "PAIRS_STREAM",
    "Pairs",
    "gaussian_scale",
    "generate_pairs",
    "load_pairs",
    "reflow_dataset",
    "save_pairs",
    "straightness",
    "write_pairs",
]

#: The :func:`~physgen.core.rng.derive_seed` key of the reflow pairs' seed in the student's run,
#: so that the student's training noise does not replay the noise its pairs were integrated from.
PAIRS_STREAM = "reflow_pairs"
#: ``z_law`` values: ``z ~ N(0, I)``, or ``z`` is the teacher's prior state as drawn
Z_LAWS = ("standard_normal", "teacher_prior")
_SUFFIXES = (".npz", ".h5", ".hdf5")


class Pairs(NamedTuple):
    """Reflow pairs: ``z`` ``[n, *event]`` noise and ``x = ODE(z)`` ``[n, *event]``, float32."""

    z: Tensor
    x: Tensor


def gaussian_scale(prior: PriorFn, event_shape: tuple[int, ...]) -> float | None:
    """``s`` if ``prior`` draws exactly ``s · n`` with ``n`` the standard normal draw of the
    same generator state (the prior ``N(0, s² I)``), else None. Checked on twin generators."""
    draws = []
    for fn in (prior, randn):
        gen = torch.Generator().manual_seed(0)
        draws.append(fn((16, *event_shape), generator=gen, dtype=torch.float64).cpu())
    a, n = draws
    s = float((a * n).sum() / (n * n).sum())
    return s if s > 0 and torch.allclose(a, s * n, rtol=1e-6, atol=1e-9 * s) else None


def _generate(
    process: Process, net: nn.Module, event_shape: tuple[int, ...], n: int, *, sampler: str,
    steps: int, seed: int, batch_size: int, options: dict[str, Any] | None, progress: bool,
) -> tuple[Pairs, dict[str, Any]]:  # fmt: skip
    from physgen.sampling import resolve_sampler, sample

    spec = resolve_sampler(process, sampler)
    if spec.stochastic:
        raise ConfigError(f"reflow needs a deterministic sampler; {sampler!r} injects noise")
    view: Any = process_view(process, spec.view, net)
    scale = gaussian_scale(view.prior, tuple(event_shape))
    if scale is None and spec.view != "ode":
        raise ConfigError(
            f"reflow from a non-Gaussian prior needs an ode-view sampler, not {sampler!r} "
            f"({spec.view} view: its prior is in another frame)"
        )
    with tqdm(
        total=n, disable=not progress, unit="pair", dynamic_ncols=True, desc="reflow pairs"
    ) as bar:
        out = sample(
            process, net, event_shape, n=n, sampler=sampler, steps=steps, seed=seed,
            batch_size=batch_size, options=options, on_batch=bar.update,
        )  # fmt: skip
    # sample() draws row i's prior from its own generator seeded by (seed, i), first thing.
    gen = StackedGenerator.for_samples(seed, 0, n, out.x.device)
    start = view.prior((n, *event_shape), generator=gen, device=out.x.device, dtype=out.x.dtype)
    z = start / scale if scale is not None else start
    info = {
        "sampler": sampler, "steps": steps, "seed": seed, "nfe": out.nfe,
        "z_law": Z_LAWS[0] if scale is not None else Z_LAWS[1], "prior_scale": scale,
    }  # fmt: skip
    return Pairs(z.float().cpu(), out.x.float().cpu()), info


def generate_pairs(
    process: Process,
    net: nn.Module,
    event_shape: tuple[int, ...],
    n: int,
    *,
    sampler: str = "dopri5",
    steps: int = 18,
    seed: int = 0,
    batch_size: int = 4096,
    options: dict[str, Any] | None = None,
    progress: bool = False,
) -> Pairs:
    """``n`` reflow pairs ``(z, ODE(z))`` of ``process`` over ``net`` (docs/math.md §8), integrated
    by the deterministic ``sampler`` on ``steps`` grid steps (``options``: its tolerances).
    ``z`` is the standard normal draw for a Gaussian prior ``N(0, s² I)``, else the prior state.
    ``progress``: a progress bar on stderr (pairs done, batch by batch)."""
    return _generate(
        process, net, event_shape, n, sampler=sampler, steps=steps, seed=seed,
        batch_size=batch_size, options=options, progress=progress,
    )[0]  # fmt: skip


# --------------------------------------------------------------------------------------
# The pair file
# --------------------------------------------------------------------------------------


def save_pairs(
    path: str | Path, pairs: Pairs, *, meta: dict[str, Any] | None = None, overwrite: bool = True
) -> Path:
    """Write ``pairs`` to ``path`` (``.npz`` or ``.h5``) atomically: arrays ``x``, ``z``
    (float32) and ``meta`` (a JSON string). Returns ``path``."""
    from physgen.io import atomic_write

    path = Path(path)
    if path.suffix.lower() not in _SUFFIXES:
        raise ConfigError(f"{path}: a pair file ends in one of {', '.join(_SUFFIXES)}")
    z, x = (np.ascontiguousarray(t.detach().cpu().numpy(), np.float32) for t in pairs)
    if z.shape != x.shape or z.ndim < 2:
        raise ConfigError(f"pairs need z and x of one shape [n, ...], got {z.shape}, {x.shape}")
    text = json.dumps({"format": "physgen-reflow-pairs/1", **(meta or {})})

    def write(tmp: Path) -> None:
        if path.suffix.lower() == ".npz":
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, x=x, z=z, meta=np.array(text))
            return
        with h5py.File(tmp, "w") as f:
            f.create_dataset("x", data=x)
            f.create_dataset("z", data=z)
            f.attrs["meta"] = text

    return atomic_write(path, write, overwrite=overwrite)


def load_pairs(path: str | Path) -> tuple[Pairs, dict[str, Any]]:
    """The pairs and metadata stored by :func:`save_pairs`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"reflow pair file not found: {path}")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as f:
                x, z, text = f["x"], f["z"], str(f["meta"])
        else:
            with h5py.File(path, "r") as f:
                x, z, text = f["x"][()], f["z"][()], str(f.attrs["meta"])
        meta = json.loads(text)
    except (KeyError, OSError, ValueError) as err:
        raise DataError(f"{path}: not a reflow pair file ({err})") from None
    if x.shape != z.shape or x.ndim < 2:
        raise DataError(f"{path}: x {x.shape} and z {z.shape} are not paired rows")
    return Pairs(torch.from_numpy(z).float(), torch.from_numpy(x).float()), meta


def write_pairs(
    process: Process,
    net: nn.Module,
    event_shape: tuple[int, ...],
    n: int,
    *,
    out_path: str | Path,
    sampler: str = "dopri5",
    steps: int = 18,
    seed: int = 0,
    batch_size: int = 4096,
    options: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = True,
    progress: bool = False,
) -> Path:
    """:func:`generate_pairs` and :func:`save_pairs` in one call, recording the teacher
    process, sampler, NFE, seed and ``z_law`` (plus ``meta``) in the file."""
    pairs, info = _generate(
        process, net, event_shape, n, sampler=sampler, steps=steps, seed=seed,
        batch_size=batch_size, options=options, progress=progress,
    )  # fmt: skip
    teacher = {
        "name": getattr(process, "registry_name", type(process).__name__),
        "options": process.options_dict(),
    }
    full = {**info, "teacher_process": teacher, **(meta or {})}
    return save_pairs(out_path, pairs, meta=full, overwrite=overwrite)


def reflow_dataset(
    checkpoint_path: str | Path,
    n: int,
    *,
    sampler: str = "dopri5",
    steps: int = 18,
    seed: int = 0,
    out_path: str | Path,
    batch_size: int = 4096,
    options: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    overwrite: bool = True,
    progress: bool = False,
) -> Path:
    """Load the model in ``checkpoint_path`` (any process with a deterministic sampler),
    generate ``n`` reflow pairs and store them at ``out_path``; returns the path. Train on it
    with ``--process rectified --dataset OUT -o pairs=OUT`` (what ``--reflow-from`` wires).
    ``progress``: a progress bar on stderr."""
    from physgen.api import load_checkpoint

    ckpt = load_checkpoint(checkpoint_path, device=device)
    meta = {
        "teacher_checkpoint": str(checkpoint_path),
        "teacher_process": ckpt.meta.get("process", {}),
        "teacher_step": ckpt.step,
    }
    return write_pairs(
        ckpt.process, ckpt.ema, ckpt.event_shape, n, out_path=out_path, sampler=sampler,
        steps=steps, seed=seed, batch_size=batch_size, options=options, meta=meta,
        overwrite=overwrite, progress=progress,
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# Straightness
# --------------------------------------------------------------------------------------


@torch.no_grad()
def straightness(
    ode: ODEView | Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    steps: int = 100,
    *,
    solver: str = "rk4",
) -> float:
    """Straightness ``S = ∫_0^1 E||(y_1 − y_0) − dy/dτ||² dτ`` (Liu et al. 2023, the
    straightness ``S(Z)`` of a flow) of the flow from ``x0`` ``[B, *event]`` (drawn from the
    view's prior), along its own trajectory, measured in **one frame for every process**: the
    flow-matching frame, where the straight reference path is ``y_t = t y_1 + (1 − t) y_0``.

    ``ode``: a velocity ``v(x, t)`` on t ∈ [0, 1], or an :class:`~physgen.core.process.ODEView`.
    A view whose grid increases runs in that frame already (flow matching: ``y = x_t``). A view
    whose grid decreases runs in the σ-frame ``x = y_data + σ n`` (diffusion, PFGM++; EDM eq. 1
    with s = 1), and each state is mapped to ``t = 1/(1 + σ)``, ``y = t x`` — the flow-matching
    path ``t y_data + (1 − t) n`` of the same noise, so EDM on Gaussian data and flow matching
    on the same data give the same value, and ``S`` no longer scales with σ_max². Time is then
    normalised affinely over the trajectory, ``τ = (t − t_0)/(t_N − t_0)``.

    The trajectory comes from the registered ODE ``solver`` on ``steps`` steps of the view's
    grid; over each step the velocity is the chord ``Δy_i / Δτ_i``, so
    ``S ≈ Σ_i Δτ_i E||(y_N − y_0) − Δy_i/Δτ_i||²`` — exactly 0 on a straight constant-speed
    path (in the σ-frame: ``x_σ = y_data + σ n``, a constant denoiser), the integral as steps
    grow, and never evaluated at the data end. ``||·||²`` sums over the event dims; ``E`` is the
    mean over the batch. Guidance is the caller's: pass the view of a guided net
    (:class:`~physgen.sampling.guidance.GuidedNet`).
    """
    from physgen.registry import get_registry

    if steps < 1:
        raise ConfigError(f"steps must be ≥ 1, got {steps}")
    spec = get_registry().sampler(solver)
    if spec.view != "ode" or spec.stochastic:
        raise ConfigError(f"straightness needs a deterministic ode solver, not {solver!r}")
    if isinstance(ode, ODEView):
        field, grid = ode.field, ode.grid(steps)
    else:
        field, grid = ode, torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    states = [x0]
    spec.fn(field, x0, grid.to(x0.device), on_step=lambda i, x: states.append(x))
    path = torch.stack(states).to(torch.float64)  # [steps + 1, B, *event]
    grid = grid.to(device=path.device, dtype=torch.float64)
    shape = (-1, *[1] * (path.ndim - 1))
    if bool(grid[0] > grid[-1]):  # σ-frame → flow-matching frame: t = 1/(1 + σ), y = t x
        grid = 1 / (1 + grid)
        path = path * grid.reshape(shape)
    tau = (grid - grid[0]) / (grid[-1] - grid[0])
    dtau = tau.diff()
    chords = path.diff(dim=0) / dtau.reshape(shape)
    gap = (path[-1] - path[0]) - chords  # [steps, B, *event]
    per_step = gap.pow(2).flatten(2).sum(-1).mean(1)  # E||·||² at each step
    return float((dtau * per_step).sum())
