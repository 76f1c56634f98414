"""Latent mode: any process trained and sampled in the latent space of an autoencoder.

Rombach, Blattmann, Lorenz, Esser, Ommer (2022), "High-Resolution Image Synthesis with Latent
Diffusion Models" (CVPR). The data are encoded once, ``z = (E(x) − shift)/scale`` with the
shift and scale measured on the training data so the latents have zero mean and unit
standard deviation (§4.3.2 and Appendix G: "rescale the latent … to unit standard
deviation"); the process trains on ``z`` exactly as on any data, and samples are decoded by
``x = D(z · scale + shift)``. Latent mode is an option of the trainer, not a process.

The autoencoder is one of :data:`physgen.nets.autoencoder.AUTOENCODERS` (trained here by
:func:`fit_autoencoder`) or any module with ``encode``/``decode``. A checkpoint stores its
weights as ``extra.latent.<key>`` tensors and its name, config, shift and scale under the
``latent`` metadata key, so :func:`codec_from_checkpoint` rebuilds it without running code (a
user module that is not registered must be passed back in).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import trange

from physgen.errors import CheckpointError, ConfigError
from physgen.nets.autoencoder import build_autoencoder

__all__ = [
    "LatentCodec",
    "as_codec",
    "codec_from_checkpoint",
    "encode_dataset",
    "fit_autoencoder",
    "load_codec",
    "resolve_latent",
    "save_codec",
]

_PREFIX = "latent."
_CHUNK = 1024  # examples per encode/decode call


class LatentCodec(nn.Module):
    """An autoencoder with its latent normalisation: ``encode`` gives unit-std latents,
    ``decode`` maps them back to data. ``name``/``config`` name a registered autoencoder
    (None for a user module)."""

    def __init__(
        self,
        autoencoder: nn.Module,
        *,
        shift: float,
        scale: float,
        data_shape: tuple[int, ...],
        name: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not (scale > 0 and math.isfinite(scale) and math.isfinite(shift)):
            raise ConfigError(f"latent scale must be finite and > 0, got {scale}")
        self.autoencoder, self.shift, self.scale = autoencoder, float(shift), float(scale)
        self.data_shape, self.name, self.config = tuple(data_shape), name, dict(config or {})
        probe = torch.zeros((1, *self.data_shape), device=_device(autoencoder))
        with torch.no_grad():
            self.latent_shape = tuple(autoencoder.encode(probe).shape[1:])  # type: ignore[operator]

    def encode(self, x: Tensor) -> Tensor:
        """Data ``[B, *data_shape]`` -> normalised latents ``[B, *latent_shape]``."""
        return (self.autoencoder.encode(x) - self.shift) / self.scale  # type: ignore[operator]

    def decode(self, z: Tensor) -> Tensor:
        """Normalised latents -> data."""
        return self.autoencoder.decode(z * self.scale + self.shift)  # type: ignore[operator]

    def meta(self) -> dict[str, Any]:
        """What a checkpoint records (JSON)."""
        return {
            "name": self.name,
            "config": self.config,
            "shift": self.shift,
            "scale": self.scale,
            "data_shape": list(self.data_shape),
            "latent_shape": list(self.latent_shape),
        }

    def tensors(self) -> dict[str, Tensor]:
        """The autoencoder's weights as ``latent.<key>`` checkpoint tensors."""
        return {_PREFIX + k: v for k, v in self.autoencoder.state_dict().items()}


def _device(module: nn.Module) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _map(fn: Any, x: Tensor) -> Tensor:
    return torch.cat([fn(x[i : i + _CHUNK]) for i in range(0, x.shape[0], _CHUNK)])


def as_codec(latent: Any, data: Any, device: torch.device | str | None = None) -> LatentCodec:
    """``latent`` as a :class:`LatentCodec` on ``device``: a codec as is, a module with
    ``encode``/``decode`` with its shift and scale measured on ``data.x``."""
    if isinstance(latent, LatentCodec):
        return latent.to(device)
    if not (
        callable(getattr(latent, "encode", None)) and callable(getattr(latent, "decode", None))
    ):
        raise ConfigError(
            f"latent must be a LatentCodec or a module with encode/decode, got {type(latent)}"
        )
    module = latent.to(device).eval()
    x = torch.as_tensor(data.x).float().to(device)
    z = _map(module.encode, x)
    return LatentCodec(
        module, shift=float(z.mean()), scale=float(z.std()), data_shape=tuple(x.shape[1:])
    )


def encode_dataset(data: Any, codec: LatentCodec) -> SimpleNamespace:
    """``data`` with ``x`` replaced by its normalised latents (labels, name, info kept)."""
    x = torch.as_tensor(data.x).float().to(_device(codec.autoencoder))
    if tuple(x.shape[1:]) != codec.data_shape:
        raise ConfigError(
            f"the autoencoder takes data of shape {list(codec.data_shape)}, got {list(x.shape[1:])}"
        )
    return SimpleNamespace(
        x=_map(codec.encode, x),
        labels=getattr(data, "labels", None),
        name=getattr(data, "name", None),
        num_classes=getattr(data, "num_classes", 0),
        info=dict(getattr(data, "info", None) or {}),
    )


def fit_autoencoder(
    x: Tensor,
    *,
    kind: str | None = None,
    config: dict[str, Any] | None = None,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> LatentCodec:
    """Train a registered autoencoder (``conv`` for images ``[n, C, H, W]``, ``mlp`` for vectors
    by default) on ``x`` by mean squared reconstruction error with Adam, and return it as a
    codec with unit-std latents. Deterministic given ``seed`` (explicit generators).
    ``progress``: a progress bar on stderr (as the training loop's)."""
    x = torch.as_tensor(x).float().to(device)
    kind = kind or ("conv" if x.ndim == 4 else "mlp")
    if (kind == "conv") != (x.ndim == 4) or x.ndim not in (2, 4):
        raise ConfigError(f"autoencoder {kind!r} does not fit data of shape {list(x.shape)}")
    config = dict(config or {})
    try:
        with torch.device("meta"):  # no draws from the global RNG; _init fills the weights
            ae = build_autoencoder(kind, x.shape[1], config)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"autoencoder {kind!r}: {err}") from None
    seed_init, seed_data = np.random.SeedSequence(seed).generate_state(2)
    ae = ae.to_empty(device="cpu")
    _init(ae, torch.Generator().manual_seed(int(seed_init)))
    ae.to(x.device)
    gen = torch.Generator(x.device).manual_seed(int(seed_data))
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    for _ in trange(
        steps, disable=not progress, unit="step", dynamic_ncols=True, desc="autoencoder"
    ):
        idx = torch.randint(x.shape[0], (batch_size,), generator=gen, device=x.device)
        y = x.index_select(0, idx)
        loss = (ae.decode(ae.encode(y)) - y).pow(2).mean()  # type: ignore[operator]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ae.eval().requires_grad_(False)
    codec = as_codec(ae, SimpleNamespace(x=x), x.device)
    codec.name, codec.config = kind, config
    return codec


def _init(module: nn.Module, generator: torch.Generator) -> None:
    """torch's default Linear/Conv initialisation (Kaiming-uniform weights with a = √5, biases
    uniform in ±1/√fan_in), redrawn from ``generator`` instead of the global RNG."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)


def codec_from_checkpoint(raw: Any, autoencoder: nn.Module | None = None) -> LatentCodec | None:
    """The codec recorded in a raw checkpoint (:func:`physgen.io.load_checkpoint_file`), or None
    when it was not trained in latent mode. ``autoencoder`` supplies the module for a
    checkpoint made with an unregistered one (its weights are still loaded from the file)."""
    meta = raw.meta.get("latent")
    if not meta:
        return None
    try:
        if autoencoder is None:
            if meta.get("name") is None:
                raise CheckpointError(
                    f"{raw.path}: trained in the latent space of an unregistered autoencoder; "
                    "pass that module as autoencoder="
                )
            autoencoder = build_autoencoder(meta["name"], meta["data_shape"][0], meta["config"])
        state = {k[len(_PREFIX) :]: v for k, v in raw.extra.items() if k.startswith(_PREFIX)}
        autoencoder.load_state_dict(state)
        codec = LatentCodec(
            autoencoder.eval().requires_grad_(False),
            shift=meta["shift"],
            scale=meta["scale"],
            data_shape=tuple(meta["data_shape"]),
            name=meta.get("name"),
            config=meta.get("config"),
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{raw.path}: unusable latent autoencoder ({text})") from None
    return codec


def save_codec(path: str | Path, codec: LatentCodec) -> Path:
    """Write ``codec`` alone as a checkpoint file (no network), for ``--latent PATH``."""
    from physgen.io import save_checkpoint

    return save_checkpoint(
        path,
        net=None,
        ema=None,
        process=None,
        optimizer=None,
        meta={"latent": codec.meta()},
        extra=codec.tensors(),
    )


def load_codec(path: str | Path, autoencoder: nn.Module | None = None) -> LatentCodec:
    """The codec of a file written by :func:`save_codec` or of a latent-mode checkpoint."""
    from physgen.io import load_checkpoint_file

    codec = codec_from_checkpoint(load_checkpoint_file(path), autoencoder)
    if codec is None:
        raise CheckpointError(f"{path}: holds no latent autoencoder")
    return codec


def resolve_latent(
    spec: str, data: Any, resume_from: Path | None, seed: int, device: torch.device | str,
    progress: bool = False,
) -> LatentCodec:  # fmt: skip
    """The codec named by ``--latent``: ``ae`` trains the default autoencoder for the data
    (``conv`` for images, ``mlp`` for vectors; ``progress`` shows its bar), anything else is a
    file for :func:`load_codec`. A resumed run (``resume_from``) reuses the autoencoder its
    checkpoint recorded."""
    if resume_from is not None:
        return load_codec(resume_from).to(device)
    if spec == "ae":
        x = torch.as_tensor(data.x)
        return fit_autoencoder(x, seed=seed, device=device, progress=progress)
    if not Path(spec).is_file():
        raise ConfigError(f"--latent must be 'ae' or an autoencoder file, got {spec!r}")
    return load_codec(spec).to(device)
