"""Plots people would rather look at than read: sample scatters/grids and loss curves.

The one plotting module: ``physgen train`` and ``physgen sample`` call the ``plot_*`` functions,
and the bench report (:mod:`physgen.bench.report`) builds its panels from the same pieces
(:func:`pyplot`, :func:`save_figure`, :func:`running_mean`, :func:`tile_images`,
:func:`scatter`). Every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physgen.io import atomic_path

__all__ = [
    "plot_curves",
    "plot_image_grid",
    "plot_samples",
    "pyplot",
    "running_mean",
    "save_figure",
    "scatter",
    "tile_images",
]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(
    fig: Any, path: str | Path, *, overwrite: bool = True, suptitle: bool = False
) -> Path:
    """Lay out ``fig`` (leaving room for a suptitle when ``suptitle``), write it as PNG
    atomically and close it."""
    if suptitle:
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_size_inches()[1]))
    else:
        fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)
    return Path(path)


def running_mean(
    values: Sequence[float] | np.ndarray, points: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, mean)``: the running mean of ``values`` over windows of ``len // points`` (at
    least 1), each placed at the index of its window's last value."""
    v = np.asarray(values, dtype=np.float64)
    k = max(1, len(v) // points)
    smooth = np.convolve(v, np.ones(k) / k, mode="valid") if k > 1 else v
    return np.arange(len(smooth)) + k - 1, smooth


def tile_images(
    images: np.ndarray, cols: int, *, low: float = -1.0, high: float = 1.0, gap: int = 1
) -> np.ndarray:
    """Images ``[n, C, H, W]`` (C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA; an alpha channel is
    composited over white; values in ``[low, high]``, clipped) tiled ``cols`` wide on white
    with a ``gap``-pixel border: an RGB array ``[rows (H + gap) + gap, cols (W + gap) + gap,
    3]`` in ``[0, 1]``."""
    n, c, h, w = images.shape
    if c not in (1, 2, 3, 4):
        from physgen.errors import DataError

        raise DataError(f"image grid needs 1 to 4 channels (gray, LA, RGB, RGBA), got {c}")
    unit = np.clip((images - low) / (high - low), 0, 1)
    if c in (2, 4):  # composite over a white background
        alpha = unit[:, -1:]
        unit = unit[:, :-1] * alpha + (1.0 - alpha)
    rows = int(np.ceil(n / cols))
    grid = np.ones((rows * (h + gap) + gap, cols * (w + gap) + gap, 3))
    tiles = unit.transpose(0, 2, 3, 1)
    for i, tile in enumerate(tiles):
        r, q = divmod(i, cols)
        top, left = gap + r * (h + gap), gap + q * (w + gap)
        grid[top : top + h, left : left + w] = tile
    return grid


def scatter(ax: Any, samples: np.ndarray, reference: np.ndarray | None, *, size: float) -> None:
    """Samples (first two coordinates) in blue over reference data in grey."""
    if reference is not None:
        r = reference.reshape(len(reference), -1)
        ax.scatter(r[:, 0], r[:, 1 % r.shape[1]], s=size, c="0.75", label="data", rasterized=True)
    s = samples.reshape(len(samples), -1)
    ax.scatter(s[:, 0], s[:, 1 % s.shape[1]], s=size, c="C0", label="samples", rasterized=True)


def plot_samples(
    path: str | Path,
    samples: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    title: str = "",
    overwrite: bool = True,
) -> Path:
    """A scatter of 2-D samples (with reference data in grey), or of the first two
    coordinates of higher-dimensional vectors."""
    fig, ax = pyplot().subplots(figsize=(5, 5), dpi=110)
    scatter(ax, samples, reference, size=2)
    s = samples.reshape(len(samples), -1)
    lim = np.quantile(np.abs(s[:, :2]), 0.995) * 1.15 if len(s) else 1.0
    if reference is not None:
        lim = max(lim, np.quantile(np.abs(reference.reshape(len(reference), -1)[:, :2]), 0.995))
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title)
    ax.legend(loc="upper right", markerscale=4, fontsize=8)
    return save_figure(fig, path, overwrite=overwrite)


def plot_image_grid(
    path: str | Path,
    images: np.ndarray,
    *,
    ncols: int | None = None,
    low: float = -1.0,
    high: float = 1.0,
    overwrite: bool = True,
) -> Path:
    """Images ``[n, C, H, W]`` (see :func:`tile_images`) tiled into one PNG grid with a
    1-pixel gap, small images enlarged (nearest) to ≥ 32 pixels a side."""
    n, _, h, w = images.shape
    grid = tile_images(images, ncols or max(1, int(np.ceil(np.sqrt(n)))), low=low, high=high)
    zoom = max(1, 32 // max(h, w))
    grid = grid.repeat(zoom, 0).repeat(zoom, 1)
    with atomic_path(path, overwrite=overwrite) as tmp:
        pyplot().imsave(tmp, grid, format="png")
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
    """Line plot of named curves (each smoothed by a running mean over 1/100 of its length)."""
    fig, ax = pyplot().subplots(figsize=(6, 4), dpi=110)
    for name, values in curves.items():
        ax.plot(*running_mean(values, 100), label=name)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if len(curves) > 1:
        ax.legend()
    return save_figure(fig, path, overwrite=overwrite)
