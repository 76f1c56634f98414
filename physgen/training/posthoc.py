"""EMA profiles after training: the tracked power-function EMAs of a checkpoint, and post-hoc
EMA, which rebuilds the EMA of any relative length ``σ_rel`` from snapshots (Karras et al.
2024, EDM2, §3.1 and Appendix C.2; the formulas are in :mod:`physgen.core.ema`).

A run trained with ``ema_lengths=(0.05, 0.1)`` tracks two power-function EMAs
(:func:`physgen.train` updates each with ``β(t) = (1 − 1/t)^(γ+1)``) and stores them in the
checkpoint; with ``ema_snapshot_every=N`` it also writes both every ``N`` steps and at the
last step to the snapshot folder beside the checkpoint (:mod:`physgen.io.snapshots`).
:func:`ema_for_length` returns the network with the EMA weights of a given ``σ_rel``: the
tracked profile when the run tracked that length, else :func:`posthoc_ema`'s reconstruction,
``Σ_i c_i θ̂_i`` over the snapshots ``θ̂_i`` with the least-squares coefficients of EDM2
Algorithm 3 (:func:`physgen.core.ema.posthoc_coefficients`).

Why not ema-pytorch's ``PostHocEMA``: it writes its snapshots with ``torch.save`` (pickles,
which physgen never writes or reads), applies the per-step decay only every ``update_every``
steps (default 100, so the tracked profile is not the power function the reconstruction
assumes), and keeps its own step counter and copies outside the checkpoint. The math it would
bring is the dozen lines of :mod:`physgen.core.ema`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from physgen.core.ema import SIGMA_REL_MAX, posthoc_coefficients, sigma_rel_to_gamma
from physgen.errors import CheckpointError, ConfigError
from physgen.io import load_checkpoint_file
from physgen.io.snapshots import list_snapshots, load_snapshot, snapshot_dir

__all__ = ["EMAProfile", "check_ema_length", "ema_for_length", "posthoc_ema", "tracked_lengths"]


@dataclass(frozen=True)
class EMAProfile:
    """Where the weights of an EMA length came from."""

    sigma_rel: float
    #: the training step whose EMA this is
    step: int
    #: "tracked" (stored in the checkpoint) or "posthoc" (rebuilt from snapshots)
    source: str
    #: post-hoc only: the snapshot steps and σ_rel of each coefficient, and the coefficients
    snapshot_steps: tuple[int, ...] = ()
    snapshot_sigma_rels: tuple[float, ...] = ()
    coefficients: tuple[float, ...] = ()


def check_ema_length(sigma_rel: Any) -> float:
    """``sigma_rel`` as a float in ``(0, sqrt(1/12))``, else a one-line ConfigError."""
    ok = isinstance(sigma_rel, (int, float)) and not isinstance(sigma_rel, bool)
    if not ok or not 0 < sigma_rel < SIGMA_REL_MAX:
        raise ConfigError(
            f"ema_length must be a relative EMA length σ_rel in (0, {SIGMA_REL_MAX:.4f}), "
            f"got {sigma_rel!r}"
        )
    return float(sigma_rel)


def tracked_lengths(meta: dict[str, Any]) -> tuple[float, ...]:
    """The ``σ_rel`` of the EMA profiles a checkpoint holds (its ``train.ema_lengths``)."""
    return tuple(float(s) for s in meta.get("train", {}).get("ema_lengths", ()) or ())


def ema_for_length(ckpt: Any, sigma_rel: float) -> tuple[nn.Module, EMAProfile]:
    """The network of ``ckpt`` (a :class:`physgen.api.Checkpoint`) with the EMA weights of
    relative length ``sigma_rel``: the profile the run tracked, if it tracked that length,
    else the post-hoc reconstruction from its snapshots (:func:`posthoc_ema`)."""
    sigma_rel = check_ema_length(sigma_rel)
    lengths = tracked_lengths(ckpt.meta)
    for i, s in enumerate(lengths):
        if math.isclose(s, sigma_rel, rel_tol=1e-12):
            states = load_checkpoint_file(ckpt.path).profile_states()
            if len(states) != len(lengths):
                raise CheckpointError(
                    f"{ckpt.path}: {len(states)} EMA profiles stored for ema_lengths {lengths}"
                )
            net = _like(ckpt.ema)
            _load(net, states[i], ckpt.path)
            return net, EMAProfile(sigma_rel, ckpt.step, "tracked")
    return posthoc_ema(ckpt, sigma_rel)


def posthoc_ema(
    ckpt: Any, sigma_rel: float, *, step: int | None = None,
    use: tuple[float, ...] | None = None,
) -> tuple[nn.Module, EMAProfile]:  # fmt: skip
    """The EMA of relative length ``sigma_rel`` at ``step`` (default: the last snapshot at or
    before the checkpoint's step) rebuilt from the snapshots of ``ckpt``'s run (EDM2
    Algorithm 3): every snapshot up to ``step`` enters with its least-squares coefficient;
    parameters are combined in float64, buffers come from the last snapshot. ``use``: the
    tracked lengths whose snapshots enter (default all; fewer to check a reconstruction
    against a length that was tracked)."""
    sigma_rel = check_ema_length(sigma_rel)
    folder = snapshot_dir(ckpt.path)
    lengths = tracked_lengths(ckpt.meta)
    keep = [i for i, s in enumerate(lengths) if use is None or any(
        math.isclose(s, u, rel_tol=1e-12) for u in use)]  # fmt: skip
    if use is not None and len(keep) != len(set(use)):
        raise ConfigError(f"posthoc_ema use={list(use)}: the run tracked {list(lengths)}")
    snaps = [s for s in list_snapshots(folder) if s.step <= ckpt.step]
    if not snaps:
        raise ConfigError(
            f"ema_length {sigma_rel:g}: {ckpt.path} has no EMA snapshots in {folder} (train with "
            "--ema-length 0.05 --ema-length 0.1 --ema-snapshot-every N)"
        )
    for s in snaps:
        if not np.allclose(s.sigma_rels, lengths, rtol=1e-12) or len(s.sigma_rels) != len(lengths):
            raise CheckpointError(
                f"{s.path}: snapshot of EMA lengths {list(s.sigma_rels)}, but the checkpoint "
                f"tracks {list(lengths)} (a snapshot of another run?)"
            )
    target = snaps[-1].step if step is None else int(step)
    if not any(s.step == target for s in snaps):
        have = ", ".join(str(s.step) for s in snaps)
        raise ConfigError(f"posthoc_ema step {target} has no snapshot (snapshots: {have})")
    snaps = [s for s in snaps if s.step <= target]
    gammas = [sigma_rel_to_gamma(lengths[i]) for i in keep]
    t_i = np.array([s.step for s in snaps for _ in gammas], dtype=np.float64)
    g_i = np.array([g for _ in snaps for g in gammas], dtype=np.float64)
    coef = posthoc_coefficients(t_i, g_i, target, sigma_rel_to_gamma(sigma_rel))
    net = _like(ckpt.ema)
    names = {n for n, _ in net.named_parameters()}
    total: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    k = 0
    for snap in snaps:  # one snapshot in memory at a time
        states = load_snapshot(snap)
        for state in (states[i] for i in keep):
            for key, value in state.items():
                if key in names:
                    acc = total.setdefault(key, torch.zeros(value.shape, dtype=torch.float64))
                    acc.add_(value.double(), alpha=float(coef[k]))
            last = state
            k += 1
    out = {key: (total[key] if key in names else last[key]) for key in last}
    _load(net, out, snaps[-1].path)
    info = EMAProfile(
        sigma_rel, target, "posthoc", tuple(int(t) for t in t_i),
        tuple(lengths[i] for _ in snaps for i in keep), tuple(float(c) for c in coef),
    )  # fmt: skip
    return net, info


def _like(ema: nn.Module) -> nn.Module:
    return copy.deepcopy(ema).eval().requires_grad_(False)


def _load(net: nn.Module, state: dict[str, torch.Tensor], where: Any) -> None:
    current = net.state_dict()
    try:
        net.load_state_dict({k: v.to(current[k].dtype) for k, v in state.items()})
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"{where}: EMA weights do not fit the network ({err})") from None
