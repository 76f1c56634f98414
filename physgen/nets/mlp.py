"""The shared backbone for vector data: an MLP conditioned on the noise label."""

from __future__ import annotations

from torch import Tensor, nn

from physgen.nets.embeddings import FourierEmbedding, PositionalEmbedding, embed_labels


class _Block(nn.Module):
    """``h + Linear(SiLU(LayerNorm(h) + emb))``: a residual layer with the embedding added."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lin = nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.lin(nn.functional.silu(self.norm(h) + emb))


class MLP(nn.Module):
    """``F(x, noise_label, class_labels=None)`` for ``x`` of shape ``[B, dim]``.

    ``class_labels`` int64 ``[B]`` (with ``num_classes > 0``); −1 marks a row as unlabelled
    and ``None`` all rows, so one net is both the conditional and the unconditional model.

    With ``noise_labels = k > 1`` (a flow map's pair of times) ``noise_label`` is ``[B, k]``
    and each column is embedded on its own, the embeddings concatenated (as MeanFlow embeds
    ``t`` and ``t − r`` separately, Geng et al. 2025, §4.3).

    The noise label is embedded (positional or Fourier), mapped by a small MLP and added to
    every hidden layer's pre-activation, as DDPM++ adds its embedding inside each residual
    block. Hidden layers are residual (x + Linear(SiLU(LayerNorm(x)))) so depth is cheap to
    raise. The output layer starts at zero: an untrained ``F`` is 0, the natural initial guess
    for every preconditioned target (EDM's ``c_out F`` term, a velocity, a noise prediction).
    """

    def __init__(
        self,
        dim: int,
        *,
        width: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        embedding: str = "positional",
        num_classes: int = 0,
        noise_labels: int = 1,
    ):
        super().__init__()
        if dim < 1 or width < 1 or depth < 1:
            raise ValueError(f"MLP needs dim, width, depth ≥ 1, got {dim}, {width}, {depth}")
        if noise_labels < 1:
            raise ValueError(f"noise_labels must be ≥ 1, got {noise_labels}")
        if embedding not in ("positional", "fourier"):
            raise ValueError(f"embedding must be 'positional' or 'fourier', got {embedding!r}")
        self.dim, self.num_classes, self.noise_labels = dim, num_classes, noise_labels
        self.embed = (
            PositionalEmbedding(emb_dim) if embedding == "positional" else FourierEmbedding(emb_dim)
        )
        self.emb_mlp = nn.Sequential(
            nn.Linear(noise_labels * emb_dim, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.label_emb = nn.Embedding(num_classes, width) if num_classes > 0 else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape [B, {self.dim}], got {list(x.shape)}")
        labels = embed_labels(self.embed, noise_label, x.shape[0], self.noise_labels)
        emb = self.emb_mlp(labels.to(x.dtype))
        if self.label_emb is not None and class_labels is not None:
            # Label −1 means "no label" (classifier-free guidance): that row's embedding is 0.
            keep = (class_labels >= 0).to(emb.dtype)[:, None]
            emb = emb + self.label_emb(class_labels.clamp_min(0)).to(emb.dtype) * keep
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.out_norm(h)))
