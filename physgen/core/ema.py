"""The exponential moving average of weights, one implementation for every user: the trainer's
EMA of the sampling weights, its EMA profiles, and a consistency model's target network θ⁻
(Song et al. 2023, Algorithm 2, ``θ⁻ ← stopgrad(μ θ⁻ + (1 − μ) θ)``).

**Power-function EMA** (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", EDM2, §3.1 and Appendix C). The EMA after ``t`` steps averages the weights
of all earlier steps with the profile ``p_t(τ) = (γ + 1) τ^γ / t^(γ+1)`` on ``[0, t]``: its
relative width ``σ_rel`` (standard deviation over ``t``) is the same at every ``t``, so one
length fits a short and a long run alike. ``σ_rel = sqrt((γ+1) / ((γ+2)² (γ+3)))`` (EDM2
eq. 123; :func:`gamma_to_sigma_rel`), inverted by the largest real root of a cubic (eq. 126,
Algorithm 2; :func:`sigma_rel_to_gamma`). It is tracked during training by an EMA with the
step-dependent decay ``β(t) = (1 − 1/t)^(γ+1)`` (eq. 127 with ``t`` in steps;
:func:`power_beta`): after ``t`` updates, step ``τ``'s weights carry exactly
``(τ^(γ+1) − (τ−1)^(γ+1)) / t^(γ+1)``, the integral of ``p_t`` over ``[τ−1, τ]``.

**Post-hoc EMA** (EDM2 Appendix C.2, Algorithm 3). Snapshots of such EMAs, taken at times
``t_i`` with exponents ``γ_i``, span a space of profiles; the profile ``(t_r, γ_r)`` of any
other length is approximated by the combination ``Σ_i c_i p_i`` closest to it in L², whose
coefficients solve ``A c = b`` with the Gram matrix ``A_ij = ⟨p_i, p_j⟩`` and
``b_i = ⟨p_i, p_r⟩`` in closed form (eq. 151; :func:`profile_inner`), then normalised to sum
to one (:func:`posthoc_coefficients`). The same coefficients applied to the snapshot weights
give the reconstructed EMA (:mod:`physgen.training.posthoc`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = [
    "SIGMA_REL_MAX",
    "ema_update",
    "gamma_to_sigma_rel",
    "posthoc_coefficients",
    "power_beta",
    "profile_inner",
    "sigma_rel_to_gamma",
]

#: ``σ_rel`` of the power profile at γ = 0 (a uniform average of all steps): the longest EMA
#: a power function with γ > 0 has, ``sqrt(1/12)`` (EDM2 eq. 123)
SIGMA_REL_MAX = math.sqrt(1 / 12)


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """``ema ← decay · ema + (1 − decay) · net`` over parameters (one fused
    ``torch._foreach_lerp_``); buffers are copied. Parameters of another dtype (a float32 EMA of
    a bf16 net) are cast first."""
    dst = [p.detach() for p in ema.parameters()]
    src = [p.detach() for p in net.parameters()]
    if len(dst) != len(src):
        raise ValueError(f"EMA has {len(dst)} parameters but the network {len(src)}")
    if dst and dst[0].dtype != src[0].dtype:
        src = [t.to(dst[0].dtype) for t in src]
    if dst:
        torch._foreach_lerp_(dst, src, 1.0 - decay)
    buffers = [b.detach() for b in ema.buffers()], [b.detach() for b in net.buffers()]
    if buffers[0]:
        torch._foreach_copy_(*buffers)


def gamma_to_sigma_rel(gamma: float) -> float:
    """``σ_rel`` of the power profile with exponent ``γ > 0`` (EDM2 eq. 123)."""
    g = float(gamma)
    return math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent ``γ`` whose power profile has relative width ``σ_rel`` in
    ``(0, SIGMA_REL_MAX)``: the largest real root of ``γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²)``
    (EDM2 eq. 126, Algorithm 2)."""
    s = float(sigma_rel)
    if not 0 < s < SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel must be in (0, {SIGMA_REL_MAX:.4f}), got {sigma_rel!r}")
    k = s**-2
    roots = np.roots([1.0, 7.0, 16.0 - k, 12.0 - k])
    return float(roots.real[np.abs(roots.imag) < 1e-9].max())


def power_beta(gamma: float, t: int) -> float:
    """The EMA decay of update number ``t ≥ 1`` that tracks the power profile of exponent
    ``γ``: ``(1 − 1/t)^(γ+1)`` (EDM2 eq. 127; 0 at ``t = 1``, so the EMA starts at the net)."""
    if t < 1:
        raise ValueError(f"power EMA update number must be ≥ 1, got {t}")
    return (1.0 - 1.0 / t) ** (float(gamma) + 1.0)


def profile_inner(
    t_a: np.ndarray | float, gamma_a: np.ndarray | float, t_b: np.ndarray | float,
    gamma_b: np.ndarray | float,
) -> np.ndarray:  # fmt: skip
    """``⟨p_a, p_b⟩ = ∫ p_a(τ) p_b(τ) dτ`` of two power profiles (times ``t > 0``, exponents
    ``γ``), broadcast: ``(γ_a+1)(γ_b+1) (t_a/t_b)^e / ((γ_a+γ_b+1) max(t_a, t_b))`` with
    ``e = γ_b`` where ``t_a < t_b``, else ``−γ_a`` (EDM2 eq. 151, Algorithm 3)."""
    ta, ga, tb, gb = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    exponent = np.where(ta < tb, gb, -ga)
    num = (ga + 1) * (gb + 1) * (ta / tb) ** exponent
    return np.asarray(num / ((ga + gb + 1) * np.maximum(ta, tb)))


def posthoc_coefficients(
    t_i: np.ndarray, gamma_i: np.ndarray, t_r: float, gamma_r: float
) -> np.ndarray:
    """``[n]`` float64 coefficients ``c`` of the snapshots ``(t_i, γ_i)`` whose combination
    ``Σ c_i p_i`` is the least-squares approximation of the profile ``(t_r, γ_r)``: the normal
    equations ``A c = b`` of :func:`profile_inner`, solved by ``lstsq`` (a Gram matrix of many
    snapshots is ill-conditioned), then normalised to sum to one (EDM2 Algorithm 3)."""
    t = np.asarray(t_i, dtype=np.float64).reshape(-1)
    g = np.broadcast_to(np.asarray(gamma_i, dtype=np.float64), t.shape)
    gram = profile_inner(t[:, None], g[:, None], t[None, :], g[None, :])
    b = profile_inner(t, g, float(t_r), float(gamma_r))
    c = np.linalg.lstsq(gram, b, rcond=None)[0]
    return np.asarray(c / c.sum())
