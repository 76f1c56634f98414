"""Datasets: the toy shapes and the Gaussian-mixture dataset, user files, and every bad input.

Statistical tolerances: with n = 20 000 draws of unit-scale data the standard error of a mean
or a second moment is about 0.01, so 0.05 is ~5 standard errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from physgen.data import Dataset, load_dataset, validate_array
from physgen.data.files import load_file
from physgen.data.toy2d import DATASETS, gmm, gmm_of, moons
from physgen.errors import ConfigError, DataError

TOY = [e.name for e in DATASETS]
N = 20_000
TOL = 0.05  # ~5 standard errors at N draws (module docstring)


@pytest.fixture(scope="module")
def big() -> dict[str, Dataset]:
    return {name: load_dataset(name, N, seed=3) for name in TOY}


# -- toy datasets ----------------------------------------------------------------------------


def test_every_builtin_is_registered() -> None:
    assert set(TOY) == {"moons", "8gaussians", "checkerboard", "swissroll", "rings", "gmm"}
    assert all(e.description and "\n" not in e.description for e in DATASETS)


@pytest.mark.parametrize("name", TOY)
def test_shape_dtype_finite(name: str, big: dict[str, Dataset]) -> None:
    d = big[name]
    assert d.x.shape == (N, 2) and d.event_shape == (2,) and len(d) == N
    assert d.x.dtype == torch.float32
    assert torch.isfinite(d.x).all()
    if d.labels is not None:
        assert d.labels.dtype == torch.int64 and d.labels.shape == (N,)
        assert set(d.labels.unique().tolist()) == set(range(d.num_classes))


@pytest.mark.parametrize("name", TOY)
def test_unit_scale(name: str, big: dict[str, Dataset]) -> None:
    """The stated convention: mean 0, mean squared coordinate 1, points within [-3, 3]."""
    x = big[name].x.double()
    assert x.mean(0).abs().max() < TOL
    assert abs(x.pow(2).mean().item() - 1) < TOL
    assert x.abs().max() < 3


@pytest.mark.parametrize("name", TOY)
def test_deterministic_per_seed_and_row(name: str) -> None:
    a, b, c = (load_dataset(name, 64, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.x, b.x)
    assert not torch.allclose(a.x, c.x)
    # row i depends on (seed, i) only: a shorter draw is a prefix of a longer one
    assert torch.equal(load_dataset(name, 10, seed=7).x, a.x[:10])
    assert a.info["seed"] == 7 and a.info["source"] == name


def _fit_circle(p: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Least-squares circle through points ``[m, 2]`` (Kåsa fit): centre, radius, rms residual."""
    a = torch.cat([2 * p, torch.ones(len(p), 1, dtype=p.dtype)], 1)
    sol = torch.linalg.lstsq(a, p.pow(2).sum(1, keepdim=True)).solution.squeeze(1)
    centre = sol[:2]
    radius = math.sqrt(sol[2] + centre.pow(2).sum())
    residual = ((p - centre).norm(dim=1) - radius).pow(2).mean().sqrt().item()
    return centre, radius, residual


def test_moons_are_two_labelled_arcs(big: dict[str, Dataset]) -> None:
    """Each label is an arc of one circle (residual ≈ noise), both of one radius, with centres
    √(1² + ½²) radii apart, the outer one above the inner one (make_moons' geometry)."""
    d = big["moons"]
    assert d.num_classes == 2 and abs(d.labels.float().mean().item() - 0.5) < TOL
    x = d.x.double()
    (c0, r0, e0), (c1, r1, e1) = (_fit_circle(x[d.labels == k]) for k in (0, 1))
    assert abs(r0 / r1 - 1) < 0.03
    assert e0 < 0.1 * r0 and e1 < 0.1 * r1  # noise 0.05 on radius 1 in raw units
    assert abs((c1 - c0).norm().item() / r0 - math.sqrt(1.25)) < 0.03
    assert x[d.labels == 0, 1].mean() > x[d.labels == 1, 1].mean()


def test_eight_gaussians_modes(big: dict[str, Dataset]) -> None:
    d = big["8gaussians"]
    centres = torch.stack([d.x[d.labels == k].mean(0) for k in range(8)]).double()
    radius = centres.norm(dim=1)
    assert (radius - math.sqrt(2 * (1 - 0.1**2))).abs().max() < TOL
    angles = torch.arange(8).double() * math.pi / 4
    directions = torch.stack([angles.cos(), angles.sin()], 1)
    assert torch.allclose(centres / radius[:, None], directions, atol=TOL)
    within = torch.cat([d.x[d.labels == k] - centres[k].float() for k in range(8)])
    assert abs(within.std().item() - 0.1) < 0.01


def test_rings_radii(big: dict[str, Dataset]) -> None:
    d = big["rings"]
    radii = torch.stack([d.x[d.labels == k].norm(dim=1).mean() for k in range(4)]).double()
    k = torch.arange(1.0, 5.0, dtype=torch.float64)
    assert torch.allclose(radii, k * (radii @ k) / (k @ k), atol=0.01)  # radii ∝ 1, 2, 3, 4


def test_checkerboard_occupies_alternate_cells(big: dict[str, Dataset]) -> None:
    x = big["checkerboard"].x.double() * (4 / math.sqrt(12)) + 2  # board [0, 4]²: 1 per cell
    cells = x.floor().long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16).reshape(4, 4)
    occupied = counts[(torch.arange(4)[:, None] + torch.arange(4)) % 2 == 0]
    assert (occupied.double() / N - 1 / 8).abs().max() < 0.01


def test_gmm_matches_its_mixture() -> None:
    """Empirical weights, mean and covariance vs the mixture's closed forms:
    mean m = Σ w_k μ_k, cov = Σ w_k (s_k² I + μ_k μ_kᵀ) − m mᵀ (tolerance 0.05, ~5 s.e.)."""
    d = gmm(N, seed=1, dim=3, components=5, std=0.3)
    mix = gmm_of(d)
    w, mu, s = mix.weights, mix.means, mix.stds
    assert d.x.shape == (N, 3) and d.num_classes == 5
    freq = torch.bincount(d.labels, minlength=5).double() / N
    assert (freq - w).abs().max() < 0.015
    mean = w @ mu
    cov = (
        torch.einsum("k,ki,kj->ij", w, mu, mu)
        + (w @ s**2) * torch.eye(3, dtype=torch.float64)
        - mean.outer(mean)
    )
    x = d.x.double()
    assert (x.mean(0) - mean).abs().max() < TOL
    assert (torch.cov(x.T, correction=0) - cov).abs().max() < TOL
    assert abs(torch.trace(cov).item() / 3 - 1) < 1e-9  # the scale convention, exactly


def test_gmm_of_round_trip_and_density() -> None:
    d = gmm(500, seed=2, dim=4, components=6, std=0.2)
    mix = gmm_of(d)
    info = d.info["mixture"]
    assert mix.means.tolist() == info["means"] and mix.stds.tolist() == info["stds"]
    assert torch.allclose(mix.weights, torch.tensor(info["weights"], dtype=torch.float64))
    # the seed picks the sample, mixture_seed the distribution
    assert gmm(10, seed=9, dim=4, components=6, std=0.2).info["mixture"] == info
    other = gmm_of(gmm(10, dim=4, components=6, std=0.2, mixture_seed=1))
    assert mix.log_prob(d.x.double()).mean() > other.log_prob(d.x.double()).mean() + 10
    assert gmm_of(load_dataset("8gaussians", 5)).means.shape == (8, 2)
    with pytest.raises(DataError, match="moons"):
        gmm_of(moons(5))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("moons", {"noise": -1.0}),
        ("gmm", {"std": 1.5}),
        ("gmm", {"std": 0.0}),
        ("gmm", {"dim": 0}),
        ("checkerboard", {"cells": 3}),
        ("rings", {"rings": 2.5}),
        ("moons", {"colour": "red"}),
    ],
)
def test_bad_options_are_config_errors(name: str, options: dict) -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset(name, 10, **options)
    assert "\n" not in str(err.value)


def test_unknown_spec_and_bad_n() -> None:
    with pytest.raises(ConfigError, match=r"moons.*\.npy") as err:
        load_dataset("nonsense", 10)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="positive"):
        load_dataset("moons", 0)


# -- Dataset validation ----------------------------------------------------------------------


def test_dataset_converts_and_infers_classes() -> None:
    d = Dataset("t", np.arange(6).reshape(3, 2), labels=np.array([0.0, 2.0, 1.0]))
    assert d.x.dtype == torch.float32 and d.labels.dtype == torch.int64 and d.num_classes == 3
    with pytest.raises(DataError, match="num_classes"):
        Dataset("t", np.ones((3, 2)), labels=np.array([0, 2, 1]), num_classes=2)


@pytest.mark.parametrize(
    ("x", "labels", "match"),
    [
        (torch.tensor([[0.0, 1.0], [2.0, float("nan")]]), None, r"row 1, index \(1, 1\)"),
        (np.array([[1e300, 0.0]]), None, "overflows float32"),
        (np.ones((3, 2)), np.array([0, 1]), r"expected \[3\]"),
        (np.ones((3, 2)), np.array([0, -1, 1]), "negative"),
        (np.ones((3, 2)), np.array([0, 0.5, 1]), "not an integer"),
        (torch.ones(3, 2, dtype=torch.complex64), None, "real numbers"),
        ([[1, 2], [3]], None, "rectangular"),
    ],
)
def test_dataset_rejects(x: object, labels: object, match: str) -> None:
    with pytest.raises(DataError, match=match) as err:
        Dataset("bad", x, labels)  # type: ignore[arg-type]
    assert str(err.value).startswith("bad: ") and "\n" not in str(err.value)


def test_validate_array_keeps_tensor_device_and_rejects_empty_examples() -> None:
    assert validate_array("t", torch.ones(2, 3, dtype=torch.int32)).dtype == torch.float32
    with pytest.raises(DataError, match="empty"):
        validate_array("t", np.ones((4, 0)))


# -- files -----------------------------------------------------------------------------------

X = np.arange(24, dtype=np.float64).reshape(6, 2, 2)
Y = np.array([0, 1, 2, 0, 1, 3])


def _write(path: Path, x: np.ndarray, labels: np.ndarray | None, key: str = "labels") -> None:
    if path.suffix == ".npy":
        np.save(path, x)
    elif path.suffix == ".npz":
        np.savez(path, x=x, **({} if labels is None else {key: labels}))
    else:
        with h5py.File(path, "w") as f:
            f["x"] = x
            if labels is not None:
                f[key] = labels


ROUND_TRIPS = [(".npy", False)] + [(s, b) for s in (".npz", ".h5", ".hdf5") for b in (False, True)]


@pytest.mark.parametrize(("suffix", "with_labels"), ROUND_TRIPS)
def test_file_round_trip(tmp_path: Path, suffix: str, with_labels: bool) -> None:
    path = tmp_path / f"data{suffix}"
    _write(path, X, Y if with_labels else None, key="y" if suffix == ".npz" else "labels")
    d = load_dataset(str(path), 100)
    assert d.x.dtype == torch.float32 and torch.equal(d.x, torch.from_numpy(X).float())
    assert d.info["source"] == str(path) and d.info["rows"] == 6
    first = load_file(path, 4)
    assert torch.equal(first.x, d.x[:4])
    if with_labels:
        assert torch.equal(d.labels, torch.from_numpy(Y)) and d.num_classes == 4
        assert torch.equal(first.labels, d.labels[:4]) and first.num_classes == 4
    else:
        assert d.labels is None and d.num_classes == 0


def test_named_keys(tmp_path: Path) -> None:
    path = tmp_path / "nested.h5"
    with h5py.File(path, "w") as f:
        f["group/images"] = X
        f["group/classes"] = Y
    d = load_file(path, key="group/images", labels_key="group/classes")
    assert d.x.shape == (6, 2, 2) and d.labels is not None
    assert load_file(path, key="group/images").labels is None
    path = tmp_path / "two.npz"
    np.savez(path, a=X, b=X)
    with pytest.raises(DataError, match="a, b"):
        load_file(path)
    assert load_file(path, key="b").info["key"] == "b"


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file proves code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _pickle_npy(path: Path, marker: Path) -> None:
    np.save(path, np.array([_Payload(marker)], dtype=object), allow_pickle=True)


def _pickle_npz(path: Path, marker: Path) -> None:
    np.savez(path, x=np.array([_Payload(marker)], dtype=object))


def _truncate(path: Path, keep: int) -> None:
    """Keep the first ``keep`` bytes (negative: drop the last ``-keep``)."""
    path.write_bytes(path.read_bytes()[:keep])


def _bad_npy(x: object) -> object:
    return lambda p: np.save(p, np.asarray(x))


BAD = {
    "nan.npy": (_bad_npy([[0.0, 1.0], [2.0, np.nan]]), r"nan at row 1"),
    "inf.npz": (lambda p: np.savez(p, x=np.array([[1.0], [np.inf]])), r"inf at row 1"),
    "inf.h5": (lambda p: _write(p, np.array([[1.0], [-np.inf]]), None), r"inf at row 1"),
    "oned.npy": (_bad_npy([1.0, 2.0, 3.0]), r"reshape to \[n, 1\]"),
    "empty.npy": (_bad_npy(np.zeros((0, 3))), "0 rows"),
    "empty.h5": (lambda p: _write(p, np.zeros((0, 3)), None), "0 rows"),
    "strings.npy": (_bad_npy([["a", "b"], ["c", "d"]]), "non-numeric"),
    "strings.h5": (lambda p: _write(p, np.array([[b"a"], [b"b"]]), None), "non-numeric"),
    "cut_data.npy": (lambda p: (_bad_npy(np.ones((100, 3)))(p), _truncate(p, -50)), "truncated"),
    "cut_header.npy": (lambda p: (_bad_npy(np.ones((100, 3)))(p), _truncate(p, 20)), "npy"),
    "cut.npz": (lambda p: (_write(p, X, Y), _truncate(p, 200)), "unreadable"),
    "cut.h5": (lambda p: (_write(p, X, Y), _truncate(p, 1000)), "HDF5"),
    "text.h5": (lambda p: p.write_text("just some text\n"), "not a readable HDF5"),
    "text.npz": (lambda p: p.write_text("just some text\n"), "unreadable"),
    "labels_short.npz": (lambda p: np.savez(p, x=X, labels=Y[:3]), r"expected \[6\]"),
    "missing.npy": (lambda p: None, "not found"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_is_one_line_data_error(tmp_path: Path, name: str) -> None:
    write, match = BAD[name]
    path = tmp_path / name
    write(path)
    with pytest.raises(DataError, match=match) as err:
        load_dataset(str(path), 10)
    message = str(err.value)
    assert "\n" not in message and str(path) in message


@pytest.mark.parametrize(("suffix", "write"), [(".npy", _pickle_npy), (".npz", _pickle_npz)])
def test_pickle_payload_is_refused_not_run(tmp_path: Path, suffix: str, write) -> None:
    marker = tmp_path / "payload_ran"
    path = tmp_path / f"evil{suffix}"
    write(path, marker)
    with pytest.raises(DataError, match="pickled Python objects") as err:
        load_file(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)) and "unreadable" not in message
    assert not marker.exists()
    # the payload is live: loading it the unsafe way does run it
    loaded = np.load(path, allow_pickle=True)
    if suffix == ".npz":
        loaded["x"]
    assert marker.exists()


def test_file_option_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, X)
    with pytest.raises(ConfigError):
        load_dataset(str(path), 5, labels_key="y")
    with pytest.raises(ConfigError):
        load_dataset(str(path), 5, shuffle=True)
    with pytest.raises(ConfigError, match=r"\.npy, \.npz"):
        load_dataset(str(tmp_path / "a.csv"), 5)


def test_string_options_convert_to_the_loaders_types() -> None:
    """``--data-opt noise=0.0`` arrives as text; it must mean what ``noise=0.0`` means."""
    text = load_dataset("moons", 64, seed=0, noise="0.0")
    number = load_dataset("moons", 64, seed=0, noise=0.0)
    assert torch.equal(text.x, number.x)
    with pytest.raises(ConfigError, match="option noise='abc' is not a valid float"):
        load_dataset("moons", 64, noise="abc")
    with pytest.raises(ConfigError, match="has no option nope"):
        load_dataset("moons", 64, nope="1")


def test_cli_data_opt_is_validated_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from physgen.cli import cli

    args = ["train", "--steps", "1", "--data-opt", "nope=1", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "dataset 'moons' has no option nope" in result.output
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()


def test_h5_in_tiny_chunks_is_refused_before_the_read(tmp_path):
    """A header-only HDF5 dataset of 1e7 x 1e7 values in chunks of one value: reading even a
    few rows would touch 1e7+ chunks (~4 KB of HDF5 bookkeeping each, an out-of-memory kill),
    so the loader refuses it in one line naming the file, before reading."""
    import h5py

    from physgen.data import load_dataset
    from physgen.errors import DataError

    path = tmp_path / "tiny_chunks.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=(10**7, 10**7), dtype="f4", chunks=(1, 1))
    with pytest.raises(DataError, match=r"tiny_chunks.h5.*HDF5 chunks"):
        load_dataset(str(path), 8)
