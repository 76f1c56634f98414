"""Shared backbones ``F(x, noise_label, class_labels=None)``; one serves every process."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from physgen.nets.mlp import MLP
from physgen.registry import NetworkEntry

__all__ = ["MLP", "NETWORKS"]


def _mlp(event_shape: tuple[int, ...], num_classes: int = 0, **config: Any) -> nn.Module:
    if len(event_shape) != 1:
        raise ValueError(
            f"the mlp backbone takes vector data [n, dim], got event shape {list(event_shape)}"
        )
    return MLP(math.prod(event_shape), num_classes=num_classes, **config)


NETWORKS = [
    NetworkEntry(
        name="mlp",
        factory=_mlp,
        description="residual MLP for vector data, noise label added in every block",
        config={"width": 128, "depth": 3, "emb_dim": 64, "embedding": "positional"},
    ),
]
