"""Plots people would rather look at than read: sample scatters/grids and loss curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from physgen.io import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_samples(
    path: str | Path,
    samples: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    title: str = "",
    overwrite: bool = True,
) -> Path:
    """A scatter of 2-D samples (with reference data in grey), or of the first two
    coordinates of higher-dimensional vectors. Written atomically."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    s = samples.reshape(len(samples), -1)
    if reference is not None:
        r = reference.reshape(len(reference), -1)
        ax.scatter(r[:, 0], r[:, 1 % r.shape[1]], s=2, c="0.75", label="data", rasterized=True)
    ax.scatter(s[:, 0], s[:, 1 % s.shape[1]], s=2, c="C0", label="samples", rasterized=True)
    lim = np.quantile(np.abs(s[:, :2]), 0.995) * 1.15 if len(s) else 1.0
    if reference is not None:
        lim = max(lim, np.quantile(np.abs(reference.reshape(len(reference), -1)[:, :2]), 0.995))
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title)
    ax.legend(loc="upper right", markerscale=4, fontsize=8)
    return _save(fig, plt, path, overwrite)


def plot_image_grid(
    path: str | Path,
    images: np.ndarray,
    *,
    ncols: int | None = None,
    low: float = -1.0,
    high: float = 1.0,
    overwrite: bool = True,
) -> Path:
    """Images ``[n, C, H, W]`` (values in ``[low, high]``, clipped) tiled into one PNG grid
    with a 1-pixel gap, small images enlarged (nearest) to ≥ 32 pixels a side. C = 1 (gray),
    2 (gray + alpha), 3 (RGB) or 4 (RGBA); alpha is composited over white. Written
    atomically."""
    plt = _figure()
    images = _rgb(np.clip((images - low) / (high - low), 0, 1))
    n, _, h, w = images.shape
    cols = ncols or max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / cols))
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, 3))
    tiles = images.transpose(0, 2, 3, 1)
    for i, tile in enumerate(tiles):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = tile
    zoom = max(1, 32 // max(h, w))
    grid = grid.repeat(zoom, 0).repeat(zoom, 1)
    with atomic_path(path, overwrite=overwrite) as tmp:
        plt.imsave(tmp, grid, format="png")
    return Path(path)


def _rgb(images: np.ndarray) -> np.ndarray:
    """``[n, C, H, W]`` in [0, 1] as gray or RGB: an alpha channel (C = 2 or 4) is
    composited over a white background."""
    c = images.shape[1]
    if c not in (1, 2, 3, 4):
        from physgen.errors import DataError

        raise DataError(f"image grid needs 1 to 4 channels (gray, LA, RGB, RGBA), got {c}")
    if c in (2, 4):
        alpha = images[:, -1:]
        images = images[:, :-1] * alpha + (1.0 - alpha)
    return images


def plot_curves(
    path: str | Path,
    curves: dict[str, Sequence[float] | np.ndarray],
    *,
    xlabel: str = "step",
    ylabel: str = "loss",
    logy: bool = True,
    title: str = "",
    overwrite: bool = True,
) -> Path:
    """Line plot of named curves (a loss curve is smoothed with a running mean)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, values in curves.items():
        v = np.asarray(values, dtype=np.float64)
        k = max(1, len(v) // 100)
        smooth = np.convolve(v, np.ones(k) / k, mode="valid") if k > 1 else v
        ax.plot(np.arange(len(smooth)) + k - 1, smooth, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if len(curves) > 1:
        ax.legend()
    return _save(fig, plt, path, overwrite)


def _save(fig, plt, path: str | Path, overwrite: bool) -> Path:
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
