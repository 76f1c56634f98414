"""Sample-quality metrics between two sample sets ``[n, *event]`` (samples) and ``[m, *event]``
(reference), and the likelihood of data under a model.

Every set metric is ``fn(samples, reference, *, generator=None, features=None) -> float`` and
registered in :data:`METRICS` (handed to the ``physgen_metrics`` hook by the built-in plugin):

======================  =====================================================  ==========
name                    what                                                   better
======================  =====================================================  ==========
``sliced_w2``           sliced Wasserstein-2 (:mod:`.transport`)               lower
``w2``                  exact Wasserstein-2 (not squared), equal sizes (POT)   lower
``mmd2_unbiased``       unbiased MMD², Gaussian kernel, median bandwidth;      lower
                        an estimate of a square: can be slightly negative
``fd``                  Fréchet distance of Gaussian fits (FID on Inception)   lower
``kid``                 KID: unbiased MMD², cubic kernel, 100 subsets          lower
``precision``           k-NN precision, k = 3 (:mod:`.knn`)                    higher
``recall``              k-NN recall, k = 3                                     higher
``density``             density, k = 5                                         higher
``coverage``            coverage, k = 5                                        higher
======================  =====================================================  ==========

``features`` (a :class:`~physgen.metrics.features.Features`) picks the space the sets are
compared in — raw samples when ``None``; a TorchScript Inception file
(:func:`~physgen.metrics.features.torchscript_features`) or a network trained on the dataset
(:func:`~physgen.metrics.featnet.train_features`) for images. Record ``features.name`` with
the score: a Fréchet distance is only meaningful with its feature space. Bind it with
``functools.partial(entry.fn, features=f)``. Options other than ``features`` (``k``,
``subsets``, …) are keywords of the functions below.

The likelihood needs a model, not two sets: :func:`~physgen.metrics.nll.nll` (not a
:class:`~physgen.registry.MetricEntry`).
"""

from __future__ import annotations

from physgen.metrics.features import RAW, Features, embed, torchscript_features
from physgen.metrics.frechet import fd, frechet_gaussian
from physgen.metrics.kernel import kid, mmd_rbf
from physgen.metrics.knn import coverage, density, precision, recall
from physgen.metrics.transport import sliced_w2, w2
from physgen.registry import MetricEntry

__all__ = [
    "METRICS",
    "RAW",
    "Features",
    "coverage",
    "density",
    "embed",
    "fd",
    "frechet_gaussian",
    "kid",
    "mmd_rbf",
    "precision",
    "recall",
    "sliced_w2",
    "torchscript_features",
    "w2",
]

#: the built-in metrics, handed to the ``physgen_metrics`` hook by :mod:`physgen.registry.builtin`
METRICS = [
    MetricEntry(
        "sliced_w2", sliced_w2, "sliced Wasserstein-2 over 256 random projections (seeded)"
    ),
    MetricEntry("w2", w2, "exact Wasserstein-2, not squared (POT network simplex), equal sizes"),
    MetricEntry(
        "mmd2_unbiased", mmd_rbf, "unbiased MMD², Gaussian kernel, median bandwidth (can be < 0)"
    ),
    MetricEntry("fd", fd, "Fréchet distance of Gaussian fits in the feature space (FID)"),
    MetricEntry("kid", kid, "KID: unbiased MMD², cubic polynomial kernel, 100 subsets (seeded)"),
    MetricEntry("precision", precision, "k-NN precision (Kynkäänniemi et al. 2019, k=3)", False),
    MetricEntry("recall", recall, "k-NN recall (Kynkäänniemi et al. 2019, k=3)", False),
    MetricEntry("density", density, "density (Naeem et al. 2020, k=5), ~1 when sets agree", False),
    MetricEntry("coverage", coverage, "coverage (Naeem et al. 2020, k=5)", False),
]
