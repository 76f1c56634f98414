"""The streamed data layer: deterministic per-step draws, disjoint shards, worker-count
invariance, source dtypes, on-the-fly flips and crops, fresh toy batches, bad input.

Streamed batches are compared with an independent route: the eager loaders
(:func:`physgen.data.images.load_folder`, ``np.load``) indexed by the step's drawn rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from physgen.data import load_dataset
from physgen.data.images import load_folder
from physgen.data.lazy import ImageFolderRows, NpyRows, open_rows
from physgen.data.loader import LoaderSource, make_source
from physgen.data.stream import IndexStream, PairStream, ToyStream
from physgen.errors import ConfigError, DataError

PIL = pytest.importorskip("PIL.Image")


def _pixels(n: int, shape: tuple[int, ...] = (3, 6, 5), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stream")
    x = _pixels(40)
    np.save(root / "x.npy", x)
    with h5py.File(root / "x.h5", "w") as f:
        f["x"] = x
        f["labels"] = np.arange(40) % 4
    folder = root / "png"
    folder.mkdir()
    for i, img in enumerate(x):
        PIL.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i:03d}.png")
    return {"npy": root / "x.npy", "h5": root / "x.h5", "png": folder}


def _batches(source: LoaderSource | ToyStream, steps: range) -> list[torch.Tensor]:
    try:
        return [source.batch(k).x for k in steps]
    finally:
        source.close()


# -- the index stream ------------------------------------------------------------------------


def test_draws_are_a_function_of_seed_and_step() -> None:
    a = IndexStream(1000, 64, seed=5, flip=True)
    b = IndexStream(1000, 64, seed=5, flip=True)
    assert torch.equal(a.draws(7).index, b.draws(7).index)
    assert torch.equal(a.draws(7).flip, b.draws(7).flip)  # type: ignore[arg-type]
    assert not torch.equal(a.draws(7).index, a.draws(8).index)
    assert not torch.equal(a.draws(7).index, IndexStream(1000, 64, seed=6).draws(7).index)
    # switching flips on does not move the row indices (independent kinds)
    assert torch.equal(IndexStream(1000, 64, seed=5).draws(7).index, a.draws(7).index)


def test_indices_are_uniform_with_replacement() -> None:
    index = torch.cat([IndexStream(10, 1000, seed=0).draws(k).index for k in range(20)])
    counts = torch.bincount(index, minlength=10).double()
    chi2 = float(((counts - 2000) ** 2 / 2000).sum())  # 9 dof: mean 9, sd 4.2
    assert chi2 < 9 + 6 * 4.3


def test_flip_has_probability_one_half_and_mirrors(files: dict[str, Path]) -> None:
    flips = IndexStream(10, 20_000, seed=1, flip=True).draws(0).flip
    assert flips is not None
    assert abs(float(flips.double().mean()) - 0.5) < 5 * math.sqrt(0.25 / 20_000)
    eager = load_folder(files["png"]).x
    source = LoaderSource(open_rows(files["png"]), 32, seed=2, flip=True)
    draws = source.stream.draws(3)
    got = _batches(source, range(3, 4))[0]
    want = eager[draws.index]
    assert draws.flip is not None and 0 < int(draws.flip.sum()) < 32
    want[draws.flip] = want[draws.flip].flip(-1)
    assert torch.equal(got, want)


def test_crop_reads_the_drawn_window(files: dict[str, Path]) -> None:
    eager = torch.from_numpy(np.load(files["npy"]))
    source = LoaderSource(NpyRows(files["npy"]), 8, seed=0, crop=4)
    assert source.event_shape == (3, 4, 4)
    draws = source.stream.draws(0)
    got = _batches(source, range(1))[0]
    assert draws.crop is not None and len(set(draws.crop[:, 1].tolist())) > 1
    for row, (i, (top, left)) in enumerate(zip(draws.index, draws.crop, strict=True)):
        window = eager[i, :, top : top + 4, left : left + 4].float() / 127.5 - 1
        assert torch.equal(got[row], window)


# -- lazy rows -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["npy", "h5", "png"])
def test_rows_keep_the_source_dtype_and_match_eager_reading(
    files: dict[str, Path], kind: str
) -> None:
    rows = open_rows(files[kind])
    batch = rows.__getitems__([5, 1, 5, 39])
    assert batch.error is None and batch.x.dtype == torch.uint8
    assert torch.equal(batch.x, torch.from_numpy(np.load(files["npy"])[[5, 1, 5, 39]]))
    if kind == "h5":
        assert batch.labels is not None and batch.labels.tolist() == [1, 1, 1, 3]


@pytest.mark.parametrize("kind", ["npy", "h5", "png"])
def test_streamed_batch_equals_eager_data_at_the_drawn_rows(
    files: dict[str, Path], kind: str
) -> None:
    eager = load_folder(files["png"]).x  # float32 in [-1, 1], same pixels
    source = make_source(str(files[kind]), None, 16, seed=3)
    assert isinstance(source, LoaderSource)
    draws = [source.stream.draws(k).index for k in range(3)]
    for got, index in zip(_batches(source, range(3)), draws, strict=True):
        assert got.dtype == torch.float32 and torch.equal(got, eager[index])


@pytest.mark.parametrize("kind", ["h5", "png"])
def test_batches_do_not_depend_on_the_number_of_workers(files: dict[str, Path], kind: str) -> None:
    runs = [
        _batches(LoaderSource(open_rows(files[kind]), 8, seed=4, workers=w, flip=True), range(5))
        for w in (0, 1, 2)
    ]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other, strict=True))


def test_ranks_read_disjoint_shards_of_the_global_batch(files: dict[str, Path]) -> None:
    whole = _batches(LoaderSource(open_rows(files["h5"]), 8, seed=6, flip=True), range(3))
    parts = [
        _batches(
            LoaderSource(open_rows(files["h5"]), 8, seed=6, flip=True, rank=r, world_size=4),
            range(3),
        )
        for r in range(4)
    ]
    for k in range(3):
        assert all(p[k].shape[0] == 2 for p in parts)
        assert torch.equal(torch.cat([p[k] for p in parts]), whole[k])


def test_resume_at_step_k_gives_the_uninterrupted_batches(files: dict[str, Path]) -> None:
    full = _batches(LoaderSource(open_rows(files["npy"]), 8, seed=7, workers=1), range(8))
    resumed = _batches(LoaderSource(open_rows(files["npy"]), 8, seed=7, workers=1), range(5, 8))
    assert all(torch.equal(a, b) for a, b in zip(full[5:], resumed, strict=True))
    # a jump backwards restarts the loader at that step
    source = LoaderSource(open_rows(files["npy"]), 8, seed=7)
    source.batch(0), source.batch(1)
    assert torch.equal(source.batch(6).x, full[6]) and torch.equal(source.batch(2).x, full[2])


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_mid_folder_stops_with_one_line_naming_it(
    files: dict[str, Path], tmp_path: Path, workers: int
) -> None:
    folder = tmp_path / "png"
    folder.mkdir()
    for f in files["png"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    bad = folder / "017.png"
    bad.write_bytes(bad.read_bytes()[:60])  # valid header, truncated pixel data
    source = LoaderSource(ImageFolderRows(folder), 40, seed=0, workers=workers)
    with pytest.raises(DataError) as err:
        for k in range(20):  # 40 draws of 40 rows: row 17 comes up within a few steps
            source.batch(k)
    source.close()
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and "Traceback" not in message


def test_non_finite_rows_and_bad_files_are_one_line(tmp_path: Path) -> None:
    x = np.zeros((10, 2), np.float32)
    x[6, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    source = LoaderSource(NpyRows(tmp_path / "nan.npy"), 64, seed=0)
    with pytest.raises(DataError, match=r"nan\.npy: non-finite value in row 6$"):
        source.batch(0)
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"junk\.npy: unreadable \.npy file"):
        NpyRows(tmp_path / "junk.npy")
    with pytest.raises(ConfigError, match="flip/crop need uint8 images"):
        LoaderSource(NpyRows(tmp_path / "nan.npy"), 4, flip=True)
    with pytest.raises(ConfigError, match="stream needs n unset"):
        make_source("moons", 100, 4)


# -- infinite toy streams --------------------------------------------------------------------


def test_streamed_toys_are_fresh_each_step_and_have_the_toys_law() -> None:
    stream = ToyStream("moons", 4096, seed=0)
    a, b = stream.batch(0).x, stream.batch(1).x
    assert a.shape == (4096, 2) and not torch.equal(a, b)
    assert torch.equal(a, ToyStream("moons", 4096, seed=0).batch(0).x)  # (seed, step) alone
    both = torch.cat([a, b])
    # moons is scaled to mean 0 and E|x|^2 = 2 in closed form (physgen.data.toy2d)
    assert both.mean(0).abs().max() < 0.05 and abs(float(both.square().sum(1).mean()) - 2) < 0.1
    pool = load_dataset("moons", 4096, seed=0).x
    assert not torch.equal(a, pool)  # not the fixed pool


def test_toy_stream_shards_and_pairs() -> None:
    whole = ToyStream("8gaussians", 8, seed=1).batch(3)
    halves = [ToyStream("8gaussians", 8, seed=1, rank=r, world_size=2).batch(3) for r in (0, 1)]
    assert torch.equal(torch.cat([h.x for h in halves]), whole.x)
    assert whole.labels is not None and torch.equal(
        torch.cat([h.labels for h in halves if h.labels is not None]), whole.labels
    )
    pairs = PairStream("8gaussians", "moons", 2048, seed=1)
    p0, p1 = pairs.batch(0), pairs.batch(1)
    assert p0.x0 is not None and p1.x0 is not None and not torch.equal(p0.x0, p1.x0)
    radius = p0.x0.norm(dim=1)  # 8gaussians: modes on a circle of radius sqrt(2(1 - 0.01))
    assert abs(float(radius.mean()) - math.sqrt(2 * 0.99)) < 0.05
    assert torch.equal(p0.x, ToyStream("moons", 2048, seed=1).batch(0).x)


def test_compressed_hdf5_and_big_endian_npy_read_the_same_rows(tmp_path: Path) -> None:
    x = np.random.default_rng(2).normal(size=(30, 3)).astype(np.float32)
    with h5py.File(tmp_path / "z.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(4, 3), compression="gzip")
    np.save(tmp_path / "be.npy", x.astype(">f4"))
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    for name in ("z.h5", "be.npy", "f.npy"):
        batch = open_rows(tmp_path / name).__getitems__([3, 29, 3, 0])
        assert batch.error is None and torch.equal(batch.x, torch.from_numpy(x[[3, 29, 3, 0]]))
