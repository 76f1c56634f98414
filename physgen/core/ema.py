"""The exponential moving average of weights, one implementation for every user: the trainer's
EMA of the sampling weights and a consistency model's target network θ⁻ (Song et al. 2023,
Algorithm 2, ``θ⁻ ← stopgrad(μ θ⁻ + (1 − μ) θ)``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_update"]


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
