"""Feature spaces for the set metrics: a map from samples ``[n, *event]`` to vectors ``[n, d]``.

Fréchet distance, KID and precision/recall compare two sets in a feature space, and a score
means nothing without the name of that space: every :class:`Features` carries ``name``, which
the caller records next to the score (``feature_space`` in a run file).

* :data:`RAW` — the samples themselves, flattened (right for vector data).
* :func:`torchscript_features` — a network the user saved as TorchScript, loaded from a local
  file with ``torch.jit.load``; e.g. the Inception-v3 that StyleGAN2-ADA/StyleGAN3 and
  clean-fid ship as ``inception-2015-12-05.pt`` (Szegedy et al. 2016, "Rethinking the
  Inception Architecture", pool3 features, as in Heusel et al. 2017). Only TorchScript
  archives are accepted: a ``torch.save`` pickle is refused before anything is unpickled.
* :func:`physgen.metrics.featnet.train_features` — a small network trained by physgen on the
  dataset itself, when no Inception file is at hand.

Every metric function takes ``features=`` (``None`` means :data:`RAW`); scoring several
metrics in one space, embed each set once (``f = features(x)``) and pass the embeddings.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from physgen.errors import DataError

__all__ = ["RAW", "Features", "embed", "torchscript_features"]


@dataclass(frozen=True)
class Features:
    """A feature map and the name of its space."""

    #: the feature space, as reported (``"raw"``, ``"torchscript:inception-2015-12-05.pt:..."``)
    name: str
    #: ``[b, *event] -> [b, d]`` (or ``[b, ...]``, flattened after); called without gradients
    fn: Callable[[Tensor], Tensor]
    #: examples per call of ``fn``
    batch_size: int = 256

    def __call__(self, x: Tensor) -> Tensor:
        """Features ``[n, d]`` (float64, on the device ``fn`` returns) of ``x`` ``[n, *event]``."""
        with torch.no_grad():
            parts = [self.fn(b).flatten(1).double() for b in x.split(self.batch_size)]
        return torch.cat(parts)


def _identity(x: Tensor) -> Tensor:
    return x


#: the samples themselves, flattened
RAW = Features("raw", _identity)


def embed(x: Tensor, y: Tensor, features: Features | None) -> tuple[Tensor, Tensor]:
    """Both sets as float64 ``[n, d]`` and ``[m, d]`` in the feature space (``None``: raw)."""
    from physgen.core.validate import check_instance, check_tensor

    check_tensor("samples", x, min_ndim=2)
    check_tensor("reference", y, min_ndim=2)
    features = check_instance("features", features or RAW, Features, "a metrics Features")
    fx, fy = features(x), features(y)
    if fx.shape[1] != fy.shape[1]:
        raise DataError(f"sets have {fx.shape[1]} and {fy.shape[1]} feature dims")
    if len(fx) < 2 or len(fy) < 2:
        raise DataError(f"set metrics need at least 2 samples per set, got {len(fx)}, {len(fy)}")
    return fx, fy


def _check_torchscript(path: Path) -> None:
    """Refuse anything that is not a TorchScript archive before ``torch.jit.load`` sees it:
    a TorchScript zip holds ``<name>/code/`` (the scripted source) and ``constants.pkl``; a
    ``torch.save`` file holds only ``data.pkl`` and a legacy one is a bare pickle."""
    if not path.is_file():
        raise DataError(f"{path}: no such feature network file")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a TorchScript archive (a pickle? only TorchScript loads)")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if not any("/code/" in n for n in names) or not any(n.endswith("constants.pkl") for n in names):
        raise DataError(f"{path}: not a TorchScript archive (torch.save? save with torch.jit.save)")


def torchscript_features(
    path: str | os.PathLike[str],
    *,
    inception: bool = True,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> Features:
    """Features from a TorchScript network in a local file.

    ``inception=True``: the StyleGAN/clean-fid calling convention of
    ``inception-2015-12-05.pt`` — samples in [−1, 1] are mapped to pixel values in [0, 255],
    one channel is repeated to three, and the network is called as
    ``net(img, return_features=True)`` (it resizes to 299×299 itself; 2048-d pool features).
    ``inception=False``: ``net(x)`` on the samples as they are.
    """
    path = Path(path)
    _check_torchscript(path)
    try:
        with warnings.catch_warnings():  # deprecated in torch 2.13, but the format these files use
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot load as TorchScript: {first}") from None
    device = torch.device(device)
    kind = "inception" if inception else "plain"
    name = f"torchscript:{path.name}:{kind}:sha256={_sha256(path)[:12]}"
    if inception:
        return Features(name, lambda x: _inception_call(net, x.to(device)), batch_size)
    return Features(name, lambda x: net(x.to(device)), batch_size)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inception_call(net: nn.Module, x: Tensor) -> Tensor:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"Inception features need images [n, 1 or 3, H, W], got {list(x.shape)}")
    img = ((x.float() + 1) * 127.5).clamp(0, 255).round()  # [−1, 1] → 8-bit pixel values
    if img.shape[1] == 1:
        img = img.repeat(1, 3, 1, 1)
    return net(img, return_features=True)
