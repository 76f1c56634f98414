"""Sample-set metrics (physgen.metrics) against closed forms, brute force and known limits.

Independent routes: the Gaussian W2 closed form ‖μ1−μ2‖² + tr(Σ1+Σ2−2(Σ2^½Σ1Σ2^½)^½) with
scipy's ``sqrtm`` (the code uses symmetric eigendecompositions); W2 by enumerating all
permutations; MMD/KID U-statistics and k-NN manifolds by explicit loops over scipy ``cdist``.
torch-fidelity is not compared against: it pins its own torch and torchvision.
"""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist, pdist
from torch import Tensor

from physgen.data import Dataset
from physgen.errors import ConfigError, DataError
from physgen.metrics import (
    METRICS,
    coverage,
    density,
    fd,
    frechet_gaussian,
    kid,
    mmd_rbf,
    precision,
    recall,
    sliced_w2,
    torchscript_features,
    w2,
)
from physgen.metrics.featnet import train_features
from physgen.metrics.nll import nll
from physgen.registry import Registry
from tests.test_likelihood import SIGMA_MIN, gaussian_view, mvn_logp

MU1, MU2 = torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([1.0, -0.5]).double()
S1 = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
S2 = torch.tensor([[0.4, -0.1], [-0.1, 1.2]], dtype=torch.float64)


def closed_w2(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> float:
    """Squared W2 between two Gaussians via scipy's Schur-method sqrtm."""
    r = scipy.linalg.sqrtm(s2.numpy())
    cross = scipy.linalg.sqrtm(r @ s1.numpy() @ r).real
    return float((mu1 - mu2).pow(2).sum() + np.trace(s1.numpy() + s2.numpy() - 2 * cross))


def gauss(n: int, mu: Tensor, cov: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (
        mu
        + torch.randn(n, len(mu), generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    )


def sobol_gauss(n: int, mu: Tensor, cov: Tensor, seed: int) -> Tensor:
    """Quasi-Monte Carlo N(μ, Σ): scrambled Sobol points through the normal inverse CDF, whose
    empirical measure converges far faster than i.i.d. draws."""
    u = torch.quasirandom.SobolEngine(len(mu), scramble=True, seed=seed).draw(
        n, dtype=torch.float64
    )
    root = torch.from_numpy(scipy.linalg.sqrtm(cov.numpy()).real)
    return mu + torch.special.ndtri(u) @ root.T


def exact_moments(n: int, mu: Tensor, cov: Tensor, seed: int) -> Tensor:
    """n points whose sample mean is exactly μ and unbiased sample covariance exactly Σ."""
    z = gauss(n, torch.zeros_like(mu), torch.eye(len(mu), dtype=mu.dtype), seed)
    z = z - z.mean(0)
    white = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T
    return mu + white @ torch.linalg.cholesky(cov).T


# -- identities -----------------------------------------------------------------------------


def test_identical_sets():
    x = gauss(200, MU1, S1, 0)
    assert w2(x, x) == pytest.approx(0.0, abs=1e-7)  # sqrt of a round-off-sized cost
    assert sliced_w2(x, x) == pytest.approx(0.0, abs=1e-12)
    assert fd(x, x) == pytest.approx(0.0, abs=1e-10)
    assert abs(mmd_rbf(x, x)) < 5 / len(x)  # unbiased estimator: O(1/n) below 0 at x = y
    assert precision(x, x) == recall(x, x) == coverage(x, x) == 1.0


def test_registry_names():
    names = Registry(entry_points=False, plugins=[("m", _Plugin())]).names("metrics")
    assert names == sorted(
        [
            "sliced_w2",
            "w2",
            "mmd2_unbiased",
            "fd",
            "kid",
            "precision",
            "recall",
            "density",
            "coverage",
        ]
    )


class _Plugin:
    @staticmethod
    def physgen_metrics():
        return METRICS


# -- Wasserstein-2 and Fréchet distance -----------------------------------------------------


def test_w2_brute_force_permutations():
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g) + 0.5
        cost = cdist(x.numpy(), y.numpy(), "sqeuclidean")
        best = min(cost[range(6), list(p)].mean() for p in itertools.permutations(range(6)))
        assert w2(x, y) ** 2 == pytest.approx(best, rel=1e-10)  # w2 is W2, not W2²


def test_w2_converges_to_gaussian_closed_form():
    exact = closed_w2(MU1, S1, MU2, S2)
    errors = [
        abs(w2(sobol_gauss(n, MU1, S1, 1), sobol_gauss(n, MU2, S2, 2)) ** 2 - exact)
        for n in (64, 256, 1024)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.015 * exact


def test_w2_refuses_unequal_and_large_sets():
    x = torch.randn(10, 2)
    with pytest.raises(ConfigError, match="equal size"):
        w2(x, x[:9])
    with pytest.raises(ConfigError, match="max_n"):
        w2(x, x, max_n=9)


def test_fd_equals_closed_form_with_exact_moments():
    x, y = exact_moments(50, MU1, S1, 0), exact_moments(70, MU2, S2, 1)
    assert fd(x, y) == pytest.approx(closed_w2(MU1, S1, MU2, S2), rel=1e-10)


def test_frechet_gaussian_special_cases():
    # 1-D: (μ1 − μ2)² + (s1 − s2)²; commuting covariances: ‖μ1 − μ2‖² + ‖Σ1^½ − Σ2^½‖_F²
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    one = frechet_gaussian(t([0.3]), t([[4.0]]), t([-1.0]), t([[0.25]]))
    assert one == pytest.approx(1.3**2 + 1.5**2, rel=1e-12)
    d1, d2 = t([1.0, 4.0, 9.0]), t([0.25, 1.0, 0.0])  # Σ2 singular
    mu = torch.zeros(3, dtype=torch.float64)
    diag = frechet_gaussian(mu, torch.diag(d1), mu, torch.diag(d2))
    assert diag == pytest.approx(float((d1.sqrt() - d2.sqrt()).pow(2).sum()), rel=1e-12)
    # rank-deficient Gaussian fits (fewer samples than dimensions) stay finite and match scipy
    x, y = (
        gauss(5, torch.zeros(8).double(), torch.eye(8).double(), 0),
        gauss(6, torch.ones(8).double(), torch.eye(8).double(), 1),
    )
    cx, cy = torch.cov(x.T), torch.cov(y.T)
    assert fd(x, y) == pytest.approx(closed_w2(x.mean(0), cx, y.mean(0), cy), rel=1e-6)


# -- kernel distances -----------------------------------------------------------------------


def brute_mmd2(x: np.ndarray, y: np.ndarray, k) -> float:
    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(a, b) for a in x for b in y) / (n * m)
    return sxx + syy - 2 * sxy


def test_kid_one_full_subset_is_the_u_statistic():
    x, y = gauss(9, MU1, S1, 0), gauss(9, MU2, S2, 1)
    cubic = lambda a, b: (a @ b / 2 + 1) ** 3  # noqa: E731
    ref = brute_mmd2(x.numpy(), y.numpy(), cubic)
    assert kid(x, y, subsets=1, subset_size=9) == pytest.approx(ref, rel=1e-10)


def test_mmd_median_bandwidth_against_brute_force():
    x, y = gauss(3, MU1, S1, 0), gauss(4, MU2, S2, 1)  # 21 pairs: an odd count, one median
    h = float(np.median(pdist(np.concatenate([x.numpy(), y.numpy()]))))
    rbf = lambda a, b: math.exp(-((a - b) ** 2).sum() / (2 * h**2))  # noqa: E731
    ref = brute_mmd2(x.numpy(), y.numpy(), rbf)
    assert mmd_rbf(x, y) == pytest.approx(ref, rel=1e-10)
    assert mmd_rbf(x, y, bandwidth=h) == pytest.approx(ref, rel=1e-10)


def test_kid_unbiased_for_one_distribution():
    kids, biased = [], []
    cubic = lambda a, b: (a @ b.T / 2 + 1) ** 3  # noqa: E731
    for seed in range(200):
        x, y = gauss(40, MU1, S1, 2 * seed), gauss(40, MU1, S1, 2 * seed + 1)
        gen = torch.Generator().manual_seed(seed)
        kids.append(kid(x, y, subsets=2, subset_size=30, generator=gen))
        # the V-statistic (diagonals kept): biased upwards by (E k(x,x) − E k(x,y)) · 2/n
        biased.append(float(cubic(x, x).mean() + cubic(y, y).mean() - 2 * cubic(x, y).mean()))
    se = lambda v: np.std(v) / math.sqrt(len(v))  # noqa: E731
    assert abs(np.mean(kids)) < 3.5 * se(kids)
    assert np.mean(biased) > 10 * se(biased)  # the test can tell a biased estimator


# -- k-NN precision, recall, density, coverage -------------------------------------------------


def brute_manifold(x: np.ndarray, y: np.ndarray, k: int) -> dict[str, float]:
    """The definitions, looped: samples x, reference y."""

    def radii(a: np.ndarray) -> np.ndarray:
        return np.array([sorted(cdist(a[i : i + 1], a)[0])[k] for i in range(len(a))])

    ry, rx = radii(y), radii(x)
    d = cdist(x, y)  # [m samples, n reference]
    prec = np.mean([any(d[j, i] <= ry[i] for i in range(len(y))) for j in range(len(x))])
    rec = np.mean([any(d[j, i] <= rx[j] for j in range(len(x))) for i in range(len(y))])
    dens = sum(d[j, i] <= ry[i] for j in range(len(x)) for i in range(len(y))) / (k * len(x))
    cov = np.mean([any(d[j, i] <= ry[i] for j in range(len(x))) for i in range(len(y))])
    return {"precision": prec, "recall": rec, "density": dens, "coverage": cov}


@pytest.mark.parametrize("k", [1, 3, 5])
def test_manifold_metrics_against_brute_force(k):
    x, y = gauss(30, MU1 + 0.7, S1, 0), gauss(25, MU1, S2, 1)
    ref = brute_manifold(x.numpy(), y.numpy(), k)
    got = {f.__name__: f(x, y, k=k) for f in (precision, recall, density, coverage)}
    assert got == pytest.approx(ref, abs=1e-12)
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1


def test_disjoint_supports():
    x, y = gauss(50, MU1, S1, 0), gauss(50, MU1 + 100, S1, 1)
    for f in (precision, recall, density, coverage):
        assert f(x, y) == 0.0


# -- all registered metrics ---------------------------------------------------------------------


def test_every_metric_worsens_as_the_sets_move_apart():
    x = gauss(300, MU1, S1, 0)
    y0 = gauss(300, MU1, S1, 1)
    for entry in METRICS:
        scores = [
            entry.fn(x, y0 + torch.tensor([s, 0.0]), generator=torch.Generator().manual_seed(0))
            for s in (0.0, 1.5, 3.0, 4.5)
        ]
        sign = 1 if entry.lower_is_better else -1
        assert all(sign * (b - a) > 0 for a, b in itertools.pairwise(scores)), (entry.name, scores)


# -- feature spaces -----------------------------------------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.lin(x))


class _FakeInception(torch.nn.Module):
    def forward(self, img: Tensor, return_features: bool = False) -> Tensor:
        assert return_features
        return img.mean(dim=(2, 3))  # [n, 3] channel means of the 0..255 image


def test_torchscript_feature_file(tmp_path):
    net = _Tiny()
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    feats = torchscript_features(path, inception=False)
    x, y = gauss(40, torch.zeros(3).double(), torch.eye(3).double(), 0).float(), torch.rand(30, 3)
    with torch.no_grad():
        fx, fy = net(x).double(), net(y).double()
    assert torch.allclose(feats(x), fx)
    assert fd(x, y, features=feats) == pytest.approx(fd(fx, fy), rel=1e-12)
    assert feats.name.startswith("torchscript:tiny.pt:plain:sha256=")


def test_torchscript_inception_convention(tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(_FakeInception()), str(path))
    feats = torchscript_features(path)
    gray = torch.tensor([-1.0, 0.0, 1.0]).reshape(3, 1, 1, 1).expand(3, 1, 4, 4)
    expected = torch.tensor([0.0, 128.0, 255.0])[:, None].expand(3, 3)  # round(127.5) = 128
    assert torch.equal(feats(gray), expected.double())


def test_non_torchscript_files_refused(tmp_path):
    sentinel = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(Evil()))
    saved = tmp_path / "weights.pt"
    torch.save(_Tiny().state_dict(), saved)
    for path in (plain, saved, tmp_path / "missing.pt"):
        with pytest.raises(DataError) as err:
            torchscript_features(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert not sentinel.exists()


def test_trained_feature_network_is_seeded_and_cached(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    x = torch.randn(64, 1, 8, 8, generator=g) * 0.3 + (2 * labels - 1).float()[:, None, None, None]
    data = Dataset("blobs", x, labels)
    kw = {"dim": 8, "steps": 15, "batch_size": 16, "cache_dir": tmp_path}
    a = train_features(data, **kw)
    assert a.name.startswith("physgen-classifier:blobs:n=64:dim=8:steps=15:seed=0:train_acc=1")
    assert len(list(tmp_path.glob("featnet-*.safetensors"))) == 1
    b = train_features(data, **kw)  # from the cache
    assert b.name == a.name and torch.equal(a(x), b(x))
    c = train_features(data, **kw, seed=1)
    assert c.name != a.name and not torch.equal(a(x), c(x))
    ae = train_features(Dataset("vecs", x.flatten(1)), **kw)
    assert ae.name.startswith("physgen-autoencoder:vecs:") and ae(x.flatten(1)).shape == (64, 8)


# -- likelihood ---------------------------------------------------------------------------------


def test_nll_matches_smoothed_gaussian_density():
    mu, cov = torch.tensor([0.5, -1.0], dtype=torch.float64), S1
    view = gaussian_view(mu, cov)
    data = gauss(12, mu, cov, 0)
    score = nll(view, data, batch_size=5, rtol=1e-7, atol=1e-7)
    smoothed = mvn_logp(data, mu, cov + SIGMA_MIN**2 * torch.eye(2, dtype=torch.float64))
    assert score.nll == pytest.approx(float(-smoothed.mean()), abs=1e-4)
    assert score.bpd == pytest.approx(score.nll / (2 * math.log(2)), rel=1e-12)
    assert score.n == 12 and score.nfe > 0
    assert score.nll_stderr == pytest.approx(float(smoothed.std() / math.sqrt(12)), rel=1e-3)
