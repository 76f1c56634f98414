"""Image datasets: scikit-learn's bundled 8×8 digits and folders of PNG/JPEG files.

Every image dataset is ``x: [n, C, H, W]`` float32 in ``[-1, 1]`` (the range DDPM and EDM
train on, Ho et al. 2020 §3.3), with int64 class labels where the source has them.

- ``digits``: the 1,797 handwritten digits (UCI optical digits) that scikit-learn ships,
  ``[n, 1, 8, 8]``, labels 0–9; pixel values 0…16 mapped to ``v / 8 − 1``. Offline.
- ``digits16``: the same digits resized to ``[n, 1, 16, 16]`` by bilinear interpolation.
  Resized rather than padded: padding would leave three quarters of every image a constant
  border, so a 16×16 model would spend its extra resolution on nothing; bilinear weights are
  convex, so values stay in ``[-1, 1]``.
- :func:`load_folder`: ``PNG``/``JPEG`` files under a folder (``load_dataset`` routes a
  directory path here). Images directly in the folder are unlabelled; one sub-folder per
  class gives labels, numbered in sorted order of the sub-folder names (recorded in
  ``info["classes"]``). All images must share one size and mode (``L``, ``LA``, ``RGB``,
  ``RGBA``; ``1`` is read as ``L``, ``P`` as ``RGB``/``RGBA``); 8-bit values map to
  ``v / 127.5 − 1``.

**Subsets.** ``n`` at least the number of images keeps all of them in stored order; a smaller
``n`` keeps a subset chosen by ``seed`` (a ``torch.Generator`` permutation, sorted), so a
metric's reference drawn with another seed is a different subset.

**Horizontal flips.** ``flip=True`` appends the mirror image of every kept example (2n
examples, labels repeated). The trainer draws batch indices uniformly with replacement, so
this is exactly random flipping with probability 1/2 (EDM's ``--xflip``), at twice the
memory.

A file that cannot be read, or whose size or mode differs from the first image's, is a
one-line :class:`~physgen.errors.DataError` naming it. scikit-learn (digits) and Pillow
(folders) are imported only when needed; missing, they are one-line errors saying what to
install.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from physgen.data import Dataset, _check_n, _first_line
from physgen.errors import ConfigError, DataError
from physgen.registry import DatasetEntry

__all__ = ["DATASETS", "IMAGE_SUFFIXES", "digits", "digits16", "hflip", "load_folder"]

#: file types :func:`load_folder` reads
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: Pillow modes read as they are, and those converted first
_MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


# -- digits ----------------------------------------------------------------------------------


def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images ``[1797, 8, 8]`` in 0…16, labels ``[1797]``)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError(
            "the digits datasets need scikit-learn: pip install 'physgen[images]'"
        ) from None
    bunch = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target)


def digits(n: int, *, seed: int = 0, flip: bool = False) -> Dataset:
    """The 8×8 handwritten digits ``[n, 1, 8, 8]`` in ``[-1, 1]``, labels 0–9."""
    images, labels = _digits_raw()
    idx = _subset(len(images), _check_n(n), seed)
    x = torch.from_numpy(images[idx]).float().unsqueeze(1) / 8 - 1  # 0…16 -> [-1, 1]
    info = {"source": "sklearn.datasets.load_digits", "seed": seed, "flip": flip}
    return _finish(Dataset("digits", x, torch.from_numpy(labels[idx]), 10, info), flip)


def digits16(n: int, *, seed: int = 0, flip: bool = False) -> Dataset:
    """The digits resized to ``[n, 1, 16, 16]`` (bilinear; see the module docstring)."""
    d = digits(n, seed=seed)
    x = F.interpolate(d.x, size=(16, 16), mode="bilinear", align_corners=False)
    info = {**d.info, "resize": "bilinear 8x8 -> 16x16", "flip": flip}
    return _finish(Dataset("digits16", x, d.labels, 10, info), flip)


# -- folders of images -----------------------------------------------------------------------


def load_folder(
    path: str | os.PathLike[str],
    n: int | None = None,
    *,
    seed: int = 0,
    flip: bool = False,  # append the mirror image of every example (see module docstring)
) -> Dataset:
    """The PNG/JPEG images under ``path`` as ``[n, C, H, W]`` in ``[-1, 1]``; see the module
    docstring for labels, subsets and validation. ``n=None`` keeps every image."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    files, labels, classes = _listing(root)
    first, size, mode = _header(files[0], None, None)
    for f in files[1:]:
        _header(f, size, mode, first)
    idx = _subset(len(files), len(files) if n is None else _check_n(n), seed)
    x = torch.from_numpy(np.stack([_pixels(files[i], mode) for i in idx]))
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1  # [n, H, W, C] 0…255 -> [n, C, H, W]
    info: dict[str, Any] = {
        "source": str(root),
        "format": "image-folder",
        "mode": mode,
        "classes": classes,
        "rows": len(files),
        "n": len(idx),
        "seed": seed,
        "flip": flip,
    }
    y = torch.tensor([labels[i] for i in idx]) if classes else None
    return _finish(Dataset(root.name, x, y, len(classes), info), flip)


def _listing(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files (sorted), their labels and the class names (empty: unlabelled)."""
    top = _images(root, recursive=False)
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = [(d.name, _images(d, recursive=True)) for d in dirs]
    per_class = [(name, found) for name, found in per_class if found]
    if per_class and top:
        raise DataError(
            f"{top[0]}: image at the top level of a folder with class sub-folders "
            f"({', '.join(name for name, _ in per_class)}); move it into one"
        )
    if not per_class:
        if not top:
            suffixes = "/".join(IMAGE_SUFFIXES)
            raise DataError(f"{root}: no images ({suffixes}) in the folder or its sub-folders")
        return top, [0] * len(top), []
    files = [f for _, found in per_class for f in found]
    labels = [k for k, (_, found) in enumerate(per_class) for _ in found]
    return files, labels, [name for name, _ in per_class]


def _images(folder: Path, *, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in pattern
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("reading image folders needs Pillow: pip install pillow") from None
    return Image


def _mode(image: Any) -> str:
    """The mode the pixels are read in: ``1`` as ``L``, palette as ``RGB``/``RGBA``."""
    if image.mode == "1":
        return "L"
    if image.mode == "P":
        return "RGBA" if "transparency" in image.info else "RGB"
    return str(image.mode)


def _header(
    file: Path, size: tuple[int, int] | None, mode: str | None, first: Path | None = None
) -> tuple[Path, tuple[int, int], str]:
    """Size and mode from the file's header (no decoding), checked against the first's."""
    Image = _pil()
    try:
        with Image.open(file) as image:
            got_size, got_mode = (int(image.size[0]), int(image.size[1])), _mode(image)
    except Exception as err:  # Pillow raises many types on bad bytes
        raise DataError(f"{file}: unreadable image ({_first_line(err)})") from None
    if got_mode not in _MODES:
        raise DataError(f"{file}: unsupported image mode {got_mode} (supported: L, LA, RGB, RGBA)")
    if size is not None and got_size != size:
        raise DataError(
            f"{file}: size {got_size[0]}×{got_size[1]} differs from {size[0]}×{size[1]} of "
            f"{first}; all images must share one size"
        )
    if mode is not None and got_mode != mode:
        raise DataError(
            f"{file}: mode {got_mode} differs from {mode} of {first}; "
            "all images must share one mode"
        )
    return file, got_size, got_mode


def _pixels(file: Path, mode: str) -> np.ndarray:
    """The decoded image ``[H, W, C]`` uint8."""
    Image = _pil()
    try:
        with Image.open(file) as image:
            array = np.asarray(image.convert(mode), dtype=np.uint8)
    except Exception as err:  # truncated or corrupt data past a valid header
        raise DataError(f"{file}: unreadable image ({_first_line(err)})") from None
    return array.reshape(*array.shape[:2], _MODES[mode])


# -- shared ----------------------------------------------------------------------------------


def _subset(total: int, n: int, seed: int) -> Tensor:
    """All ``total`` indices when ``n ≥ total``, else ``n`` chosen by ``seed``, sorted."""
    if n >= total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(total, generator=g)[:n].sort().values


def hflip(data: Dataset) -> Dataset:
    """``data`` followed by the horizontal mirror image of every example (labels repeated)."""
    x = torch.cat([data.x, data.x.flip(-1)])
    labels = None if data.labels is None else torch.cat([data.labels, data.labels])
    return Dataset(data.name, x, labels, data.num_classes, {**data.info, "flip": True})


def _finish(data: Dataset, flip: bool) -> Dataset:
    return hflip(data) if flip else data


#: the built-in image datasets
DATASETS = [
    DatasetEntry("digits", digits, "scikit-learn's 8x8 handwritten digits [1, 8, 8], labels 0-9"),
    DatasetEntry("digits16", digits16, "the digits resized (bilinear) to [1, 16, 16], labels 0-9"),
]
