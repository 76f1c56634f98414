"""Shared backbones ``F(x, noise_label, class_labels=None)``; one serves every process."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from physgen.nets.mlp import MLP
from physgen.nets.unet import UNet, unet_config
from physgen.registry import NetworkEntry

__all__ = ["MLP", "NETWORKS", "UNet"]


def _mlp(event_shape: tuple[int, ...], num_classes: int = 0, **config: Any) -> nn.Module:
    if len(event_shape) != 1:
        raise ValueError(
            f"the mlp backbone takes vector data [n, dim], got event shape {list(event_shape)}"
        )
    return MLP(math.prod(event_shape), num_classes=num_classes, **config)


def _unet(
    event_shape: tuple[int, ...],
    num_classes: int = 0,
    *,
    preset: str = "small",
    noise_labels: int = 1,
    **config: Any,
) -> nn.Module:
    # Keys left None take the preset's value (physgen.nets.unet.PRESETS).
    return UNet(
        tuple(event_shape),
        num_classes=num_classes,
        noise_labels=noise_labels,
        **unet_config(preset, **config),
    )


#: the built-in backbones, handed to the ``physgen_networks`` hook by
#: :mod:`physgen.registry.builtin`
NETWORKS = [
    NetworkEntry(
        name="mlp",
        factory=_mlp,
        description="residual MLP for vector data, noise label added in every block",
        config={
            "width": 128,
            "depth": 3,
            "emb_dim": 64,
            "embedding": "positional",
            "noise_labels": 1,
        },
    ),
    NetworkEntry(
        name="unet",
        factory=_unet,
        description="DDPM++ U-Net for images [C, H, W] (presets: tiny, small, cifar10)",
        config={
            "preset": "small",
            "model_channels": None,
            "channel_mult": None,
            "channel_mult_emb": None,
            "num_blocks": None,
            "attn_resolutions": None,
            "dropout": None,
            "embedding": None,
            "noise_labels": 1,
        },
    ),
]
