"""A feature network trained by physgen on the dataset itself, for FD/KID/precision/recall on
data that has no standard feature network at hand (no Inception file, or not natural images).

With labels it is a small classifier and the features are its penultimate activations (as
Inception's pool features are for ImageNet classes); without labels it is an autoencoder and
the features are its bottleneck. Images ``[C, H, W]`` get a small CNN encoder, vectors an MLP.
Training is seeded (initial weights, batch order) and the weights are cached as safetensors
under a key hashed from the data and every option, so the same call gives the same space. The
:class:`~physgen.metrics.features.Features` name states all of it: scores in this space are
comparable with each other, not with FID in the literature.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physgen.data import Dataset
from physgen.errors import ConfigError
from physgen.io.atomic import atomic_write
from physgen.metrics.features import Features

__all__ = ["CACHE_ENV", "FeatureNet", "train_features"]

#: environment variable naming the cache folder (default ``~/.cache/physgen/features``)
CACHE_ENV = "PHYSGEN_FEATURE_CACHE"
_ARCH = 1  # bump when FeatureNet changes: cached weights of another architecture never load


class FeatureNet(nn.Module):
    """Encoder to ``dim`` features and a head: class logits, or a reconstruction."""

    def __init__(self, event_shape: tuple[int, ...], dim: int, num_classes: int):
        super().__init__()
        if len(event_shape) == 3:
            c = event_shape[0]
            self.encoder: nn.Module = nn.Sequential(
                nn.Conv2d(c, 32, 3, padding=1), nn.SiLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
                nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),
                nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(256, dim), nn.SiLU(),
            )  # fmt: skip
        elif len(event_shape) == 1:
            self.encoder = nn.Sequential(
                nn.Linear(event_shape[0], 128), nn.SiLU(), nn.Linear(128, dim), nn.SiLU()
            )
        else:
            raise ConfigError(
                f"feature network: event shape {list(event_shape)} not [d] or [C,H,W]"
            )
        out = num_classes or math.prod(event_shape)
        self.head = nn.Sequential(nn.Linear(dim, 256), nn.SiLU(), nn.Linear(256, out))

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


def _init(net: nn.Module, generator: torch.Generator) -> None:
    """He-normal weights from ``generator``, zero biases: seeded without the global RNG."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator))
                m.weight.mul_(math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def _cache_path(cache_dir: str | os.PathLike[str] | None, key: str) -> Path:
    root = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache/physgen/features"
    return Path(root) / f"featnet-{key[:20]}.safetensors"


def _key(data: Dataset, config: dict[str, object]) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    h.update(data.x.contiguous().numpy().tobytes())
    if data.labels is not None:
        h.update(data.labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def train_features(
    data: Dataset,
    *,
    dim: int = 64,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
) -> Features:
    """Features of a :class:`FeatureNet` trained on ``data`` (classifier when it has labels,
    else autoencoder) for ``steps`` Adam steps of ``batch_size``; loaded from the cache
    (``cache_dir``, else ``$PHYSGEN_FEATURE_CACHE``, else ``~/.cache/physgen/features``) when
    the same data and options were trained before."""
    if dim < 1 or steps < 1 or batch_size < 1:
        raise ConfigError(
            f"feature network: dim, steps, batch_size must be ≥ 1 ({dim}, {steps}, {batch_size})"
        )
    kind = "classifier" if data.labels is not None and data.num_classes >= 2 else "autoencoder"
    classes = data.num_classes if kind == "classifier" else 0
    config = {"arch": _ARCH, "kind": kind, "dim": dim, "steps": steps,
              "batch_size": batch_size, "lr": lr, "seed": seed}  # fmt: skip
    key = _key(data, config)
    path = _cache_path(cache_dir, key)
    net = FeatureNet(tuple(data.x.shape[1:]), dim, classes)
    if path.is_file():
        net.load_state_dict(safetensors.torch.load_file(str(path)))
        fit = json.loads(safetensors.safe_open(str(path), "pt").metadata()["fit"])
    else:
        fit = _fit(net, data, config, torch.device(device))
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        meta = {"config": json.dumps(config), "fit": json.dumps(fit)}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: safetensors.torch.save_file(state, str(tmp), meta))
    net = net.to(device).eval()
    name = (f"physgen-{kind}:{data.name}:n={len(data.x)}:dim={dim}:steps={steps}:seed={seed}"
            f":{fit['metric']}={fit['value']:.3g}:key={key[:12]}")  # fmt: skip
    return Features(name, lambda x: net(x.to(device)))


def _fit(net: FeatureNet, data: Dataset, config: dict, device: torch.device) -> dict:
    """Train ``net`` in place; the final training accuracy (classifier) or MSE (autoencoder)."""
    gen = torch.Generator().manual_seed(int(config["seed"]))
    _init(net, gen)
    net.to(device).train()
    x = data.x.to(device)
    labels = None if data.labels is None else data.labels.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=float(config["lr"]))
    n, bs = len(x), min(int(config["batch_size"]), len(x))
    for _ in range(int(config["steps"])):
        idx = torch.randint(n, (bs,), generator=gen).to(device)
        out = net.head(net(x[idx]))
        if config["kind"] == "classifier":
            assert labels is not None
            loss = F.cross_entropy(out, labels[idx])
        else:
            loss = F.mse_loss(out, x[idx].flatten(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        outs = torch.cat([net.head(net(b)) for b in x.split(1024)])
    if config["kind"] == "classifier":
        assert labels is not None
        return {"metric": "train_acc", "value": float((outs.argmax(1) == labels).float().mean())}
    return {"metric": "train_mse", "value": float(F.mse_loss(outs, x.flatten(1)))}
