"""The shared backbone for images: a DDPM++ U-Net ``F(x, noise_label, class_labels=None)``.

The architecture is DDPM++ (Song et al. 2021, §H and Table 3) in the configuration that EDM
retrains (Karras et al. 2022, Appendix F.2 and Table 7; NVlabs/edm ``SongUNet`` with
``--arch=ddpmpp``): a noise label embedded positionally (Vaswani et al. 2017) and mapped by a
two-layer MLP; per resolution ``num_blocks`` residual blocks (GroupNorm, SiLU, 3×3 conv, the
embedding added by a per-block linear map, dropout, 3×3 conv, sum with the skip path scaled
by 1/√2); self-attention at chosen resolutions; 2×2 average-pool down- and nearest upsampling
inside residual blocks; every encoder activation fed to the decoder by concatenation. The
last conv and every residual branch's last layer start near zero (xavier × 1e-5), so an
untrained ``F`` is ≈ 0, the natural first guess for every preconditioned target.

No process logic lives here: the process decides what ``noise_label`` is (EDM's ln(σ)/4,
DDPM's 999·t, a flow-matching t) and what the output means.

**Class labels.** ``num_classes > 0`` adds a learned label embedding to the noise embedding.
``class_labels`` is an int64 ``[B]`` tensor; ``-1`` means "no label" (its embedding is zero,
as classifier-free guidance's label dropout needs) and ``class_labels=None`` means all
unconditional.

**Randomness.** Weights are initialised from an explicit generator (seed ``init_seed``), so
a configuration always starts from the same network. Dropout draws from torch's global
generator (``torch.nn.functional.dropout`` takes no generator); the CPU-sized presets use
no dropout.

**Precision.** Works under ``torch.autocast`` (bf16/fp16) and with ``channels_last`` weights
and inputs; the output always has the input's dtype.

References:
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole. Score-Based Generative Modeling through
    Stochastic Differential Equations. ICLR 2021.
    Karras, Aittala, Aila, Laine. Elucidating the Design Space of Diffusion-Based Generative
    Models. NeurIPS 2022.
    Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. NeurIPS 2020.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from physgen.nets.embeddings import FourierEmbedding, PositionalEmbedding, embed_labels

__all__ = ["PRESETS", "UNet", "unet_config"]

#: Named configurations; config keys left as ``None`` take the preset's value.
PRESETS: dict[str, dict[str, Any]] = {
    # CPU unit tests: 45k parameters.
    "tiny": {
        "model_channels": 8,
        "channel_mult": [1, 2],
        "channel_mult_emb": 2,
        "num_blocks": 1,
        "attn_resolutions": [4],
        "dropout": 0.0,
        "embedding": "positional",
    },
    # CPU-trainable on 8×8 / 16×16 digits: 0.44M parameters.
    "small": {
        "model_channels": 16,
        "channel_mult": [1, 2, 2],
        "channel_mult_emb": 4,
        "num_blocks": 2,
        "attn_resolutions": [4],
        "dropout": 0.0,
        "embedding": "positional",
    },
    # EDM's DDPM++ for 32×32 CIFAR-10 (NVlabs/edm train.py --arch=ddpmpp; dropout 0.13 is
    # its CIFAR-10 default, Table 7): 55.7M parameters unconditional.
    "cifar10": {
        "model_channels": 128,
        "channel_mult": [2, 2, 2],
        "channel_mult_emb": 4,
        "num_blocks": 4,
        "attn_resolutions": [16],
        "dropout": 0.13,
        "embedding": "positional",
    },
}


def unet_config(preset: str = "small", **overrides: Any) -> dict[str, Any]:
    """The preset's configuration with the non-``None`` ``overrides`` applied, as plain
    values; strings (from ``--net-opt``) are parsed: ``channel_mult="1,2,2"``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (presets: {', '.join(PRESETS)})")
    config = dict(PRESETS[preset])
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(f"unknown option {key!r}")
        if value is None:
            continue
        config[key] = _parse(key, value)
    return config


def _parse(key: str, value: Any) -> Any:
    """One config value from a string or a plain value."""
    try:
        if key in ("channel_mult", "attn_resolutions"):
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            return [int(v) for v in value]
        if key == "dropout":
            return float(value)
        if key == "embedding":
            return str(value)
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {key}={value!r} is not valid") from None


def _init(layer: nn.Conv2d | nn.Linear, generator: torch.Generator, scale: float = 1.0) -> None:
    """Xavier-uniform weights times ``scale``, zero bias (EDM's ``init``/``init_zero``)."""
    nn.init.xavier_uniform_(layer.weight, generator=generator)
    with torch.no_grad():
        layer.weight.mul_(scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(32, C/4) groups and eps 1e-6, as DDPM++."""
    return nn.GroupNorm(min(32, max(channels // 4, 1)), channels, eps=1e-6)


class UNetBlock(nn.Module):
    """Residual block ``(x + conv1(drop(SiLU(GN(conv0(SiLU(GN(x))) + A·emb))))) / √2``,
    optionally resampling (``"up"``/``"down"``) and followed by single-head self-attention
    ``(h + proj(attn(GN(h)))) / √2`` (Ho et al. 2020, Appendix B; Song et al. 2021, §H)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        emb_channels: int,
        generator: torch.Generator,
        *,
        resample: str = "none",
        attention: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.cin, self.cout, self.resample, self.dropout = cin, cout, resample, dropout
        self.norm0 = _norm(cin)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_channels, cout)
        self.norm1 = _norm(cout)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        _init(self.conv0, generator)
        _init(self.affine, generator)
        _init(self.conv1, generator, 1e-5)
        self.skip: nn.Conv2d | None = None
        if cin != cout or resample != "none":
            self.skip = nn.Conv2d(cin, cout, 1)
            _init(self.skip, generator)
        self.attention = attention
        if attention:
            self.norm2 = _norm(cout)
            self.qkv = nn.Conv2d(cout, 3 * cout, 1)
            self.proj = nn.Conv2d(cout, cout, 1)
            _init(self.qkv, generator, math.sqrt(0.2))
            _init(self.proj, generator, 1e-5)

    def _resample(self, x: Tensor) -> Tensor:
        # DDPM++ resampling filter [1, 1]: 2×2 box average down, nearest-neighbour up.
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        skip_scale = 1 / math.sqrt(2)  # Song et al. 2021, §H: residual sums scaled by 1/√2
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = h + self.affine(emb)[:, :, None, None].to(h.dtype)
        h = F.silu(self.norm1(h))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        orig = self._resample(x)
        h = (h + (self.skip(orig) if self.skip is not None else orig)) * skip_scale
        if self.attention:
            b, c, height, width = h.shape
            q, k, v = self.qkv(self.norm2(h)).reshape(b, 3, 1, c, height * width).unbind(1)
            # softmax(qᵀk / √c) v over the H·W positions (scaled dot-product attention).
            a = F.scaled_dot_product_attention(
                q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
            )
            a = a.transpose(-1, -2).reshape(b, c, height, width)
            h = (h + self.proj(a)) * skip_scale
        return h


class UNet(nn.Module):
    """``F(x, noise_label, class_labels=None)`` for images ``x: [B, C, H, W]``.

    ``channel_mult[i]·model_channels`` channels at resolution level ``i`` (level 0 is the
    input size, each further level halves H and W, so both must be divisible by
    ``2^(len(channel_mult) − 1)``); ``num_blocks`` residual blocks per level in the encoder
    and ``num_blocks + 1`` in the decoder; attention where a level's height is in
    ``attn_resolutions`` (and always in the first block of the bottleneck, as DDPM++).
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        *,
        model_channels: int = 32,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 2,
        attn_resolutions: tuple[int, ...] | list[int] = (4,),
        dropout: float = 0.0,
        embedding: str = "positional",
        num_classes: int = 0,
        init_seed: int = 0,
        noise_labels: int = 1,
    ):
        super().__init__()
        _check(event_shape, model_channels, channel_mult, num_blocks, dropout, embedding)
        channels, height, _ = event_shape
        if noise_labels < 1:
            raise ValueError(f"noise_labels must be ≥ 1, got {noise_labels}")
        self.event_shape, self.num_classes = tuple(event_shape), num_classes
        self.noise_labels = noise_labels
        g = torch.Generator().manual_seed(init_seed)
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels
        self.map_noise: nn.Module = (
            PositionalEmbedding(noise_channels, endpoint=True)
            if embedding == "positional"
            else FourierEmbedding(noise_channels)
        )
        self.map_label: nn.Embedding | None = None
        if num_classes > 0:
            # As EDM's Linear on √L·one-hot(label) (no bias: a missing label adds nothing).
            self.map_label = nn.Embedding(num_classes, noise_channels)
            bound = math.sqrt(6 * num_classes / (num_classes + noise_channels))
            nn.init.uniform_(self.map_label.weight, -bound, bound, generator=g)
        self.map_layer0 = nn.Linear(noise_labels * noise_channels, emb_channels)
        self.map_layer1 = nn.Linear(emb_channels, emb_channels)
        _init(self.map_layer0, g)
        _init(self.map_layer1, g)

        block: dict[str, Any] = {"emb_channels": emb_channels, "generator": g, "dropout": dropout}
        attn = set(attn_resolutions)
        self.conv_in = nn.Conv2d(channels, model_channels, 3, padding=1)
        _init(self.conv_in, g)
        self.enc = nn.ModuleList()
        skips, cout = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            res = height >> level
            if level > 0:
                self.enc.append(UNetBlock(cout, cout, resample="down", **block))
                skips.append(cout)
            for _ in range(num_blocks):
                self.enc.append(
                    UNetBlock(cout, model_channels * mult, attention=res in attn, **block)
                )
                cout = model_channels * mult
                skips.append(cout)
        self.dec = nn.ModuleList()
        self.dec_takes_skip: list[bool] = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = height >> level
            if level == len(channel_mult) - 1:
                self._add_dec(UNetBlock(cout, cout, attention=True, **block), False)
                self._add_dec(UNetBlock(cout, cout, **block), False)
            else:
                self._add_dec(UNetBlock(cout, cout, resample="up", **block), False)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                use_attn = idx == num_blocks and res in attn
                self._add_dec(UNetBlock(cin, cout, attention=use_attn, **block), True)
        self.norm_out = _norm(cout)
        self.conv_out = nn.Conv2d(cout, channels, 3, padding=1)
        _init(self.conv_out, g, 1e-5)

    def _add_dec(self, block: UNetBlock, takes_skip: bool) -> None:
        self.dec.append(block)
        self.dec_takes_skip.append(takes_skip)

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.event_shape[0]:
            raise ValueError(
                f"UNet expects x of shape [B, {self.event_shape[0]}, H, W], got {list(x.shape)}"
            )
        emb = embed_labels(self.map_noise, noise_label, x.shape[0], self.noise_labels)
        if self.map_label is not None and class_labels is not None:
            labels = class_labels.reshape(-1).to(torch.long)
            known = (labels >= 0).unsqueeze(1)  # -1: no label, zero contribution
            label_emb = self.map_label(labels.clamp(min=0)) * known
            emb = emb + F.pad(label_emb, (0, emb.shape[1] - label_emb.shape[1]))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb.to(self.map_layer0.weight.dtype)))))

        h = self.conv_in(x)
        skips = [h]
        for block in self.enc:
            h = block(h, emb)
            skips.append(h)
        for block, takes_skip in zip(self.dec, self.dec_takes_skip, strict=True):
            if takes_skip:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h))).to(x.dtype)


def _check(
    event_shape: tuple[int, ...],
    model_channels: int,
    channel_mult: tuple[int, ...] | list[int],
    num_blocks: int,
    dropout: float,
    embedding: str,
) -> None:
    if len(event_shape) != 3:
        raise ValueError(
            f"the unet backbone takes images [n, C, H, W], got event shape {list(event_shape)}"
        )
    if model_channels < 1 or num_blocks < 1 or not channel_mult or min(channel_mult) < 1:
        raise ValueError(
            f"unet needs model_channels, num_blocks, channel_mult ≥ 1, got {model_channels}, "
            f"{num_blocks}, {list(channel_mult)}"
        )
    if model_channels % 2:
        raise ValueError(f"model_channels must be even (noise embedding), got {model_channels}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if embedding not in ("positional", "fourier"):
        raise ValueError(f"embedding must be 'positional' or 'fourier', got {embedding!r}")
    factor = 2 ** (len(channel_mult) - 1)
    _, height, width = event_shape
    if height % factor or width % factor:
        hint = "use fewer levels in channel_mult"
        if width in (1, 3, 4) and event_shape[0] > 4:
            hint = f"event shape {list(event_shape)} looks like [H, W, C]; store [n, C, H, W]"
        raise ValueError(
            f"image size {height}×{width} is not divisible by {factor} "
            f"({len(channel_mult)} resolution levels); {hint}"
        )
