"""Small autoencoders for latent mode (:mod:`physgen.training.latent`): a convolutional one
for images ``[C, H, W]`` and an MLP one for vectors ``[dim]``.

Each has ``encode(x) -> z`` and ``decode(z) -> x`` and is rebuilt from its name and JSON
config (:data:`AUTOENCODERS`), so a checkpoint stores only weights and metadata — loading it
runs no code. They are deterministic autoencoders trained by mean squared error; the
latent scale is normalised afterwards (Rombach et al. 2022, §4.3.2 and Appendix G, rescale
the latents to unit standard deviation).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["AUTOENCODERS", "ConvAutoencoder", "MLPAutoencoder", "build_autoencoder"]


class ConvAutoencoder(nn.Module):
    """``[C, H, W] -> [latent_channels, H/2^down, W/2^down]`` with stride-2 convolutions, and
    back with transposed ones; SiLU between layers, no normalisation (batch-independent)."""

    def __init__(
        self, channels: int, *, latent_channels: int = 4, width: int = 32, down: int = 1
    ) -> None:
        super().__init__()
        if channels < 1 or latent_channels < 1 or width < 1 or down < 0:
            raise ValueError("ConvAutoencoder needs channels, latent_channels, width ≥ 1, down ≥ 0")
        self.down = down
        enc: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.SiLU()]
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(down):
            enc += [nn.Conv2d(width, width, 4, stride=2, padding=1), nn.SiLU()]
            dec += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.SiLU()]
        enc.append(nn.Conv2d(width, latent_channels, 3, padding=1))
        dec.append(nn.Conv2d(width, channels, 3, padding=1))
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def encode(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-1] % 2**self.down or x.shape[-2] % 2**self.down:
            raise ValueError(
                f"ConvAutoencoder needs [B, C, H, W] with H, W divisible by {2**self.down}, "
                f"got {list(x.shape)}"
            )
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)


class MLPAutoencoder(nn.Module):
    """``[dim] -> [latent_dim]`` and back, one hidden SiLU layer of ``width`` each way."""

    def __init__(self, dim: int, *, latent_dim: int = 2, width: int = 128) -> None:
        super().__init__()
        if dim < 1 or latent_dim < 1 or width < 1:
            raise ValueError("MLPAutoencoder needs dim, latent_dim, width ≥ 1")
        self.encoder = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, width), nn.SiLU(), nn.Linear(width, dim))

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x.flatten(1))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)


#: name -> class; the first constructor argument is the data's channels (conv) or dim (mlp).
AUTOENCODERS: dict[str, type[nn.Module]] = {"conv": ConvAutoencoder, "mlp": MLPAutoencoder}


def build_autoencoder(name: str, size: int, config: dict[str, Any]) -> nn.Module:
    """The autoencoder ``name`` for data with ``size`` channels (conv) or dims (mlp)."""
    if name not in AUTOENCODERS:
        raise ValueError(f"unknown autoencoder {name!r} (known: {', '.join(AUTOENCODERS)})")
    return AUTOENCODERS[name](size, **config)
