"""Noise-level embeddings shared by every backbone."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FourierEmbedding", "PositionalEmbedding", "embed_labels"]


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of a scalar ``[B] -> [B, dim]`` (Vaswani et al. 2017,
    §3.5), as DDPM++ uses for its noise label; ``max_positions`` sets the lowest frequency."""

    def __init__(self, dim: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.dim, self.max_positions, self.endpoint = dim, max_positions, endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device)
        freqs = freqs / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = x.to(torch.float32).outer(freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[B] -> [B, dim]`` (Tancik et al. 2020), as NCSN++ embeds
    ln σ; the frequencies are a fixed buffer so the embedding is part of the checkpoint."""

    freqs: Tensor

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        # Fixed frequencies: a deterministic generator keeps the network's init reproducible.
        g = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32).outer(2 * math.pi * self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


def embed_labels(embed: nn.Module, noise_label: Tensor, batch: int, k: int) -> Tensor:
    """``[B, k · dim]`` float32: ``embed`` of each of the ``k`` noise labels of every example,
    concatenated. ``noise_label`` is 0-dim or ``[B]`` when ``k = 1`` (broadcast over the
    batch), ``[B, k]`` or ``[k]`` otherwise; a wrong shape is a ValueError naming it."""
    if k == 1:
        return embed(noise_label.reshape(-1).expand(batch))
    if noise_label.ndim == 1 and noise_label.shape[0] == k:
        noise_label = noise_label.expand(batch, k)
    if noise_label.shape != (batch, k):
        raise ValueError(
            f"expected {k} noise labels per example [{batch}, {k}], got {list(noise_label.shape)}"
        )
    return torch.cat([embed(noise_label[:, j]) for j in range(k)], dim=1)
