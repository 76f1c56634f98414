"""Image data: scikit-learn's digits (8×8 and 16×16), image folders, uint8/NaN arrays, and
every bad input as one line naming the file (library and CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from physgen.data import DATASETS, load_dataset
from physgen.data.images import load_folder
from physgen.errors import DataError

sklearn_datasets = pytest.importorskip("sklearn.datasets")
Image = pytest.importorskip("PIL.Image")


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _one_line_naming(err: pytest.ExceptionInfo, name: str) -> None:
    message = str(err.value)
    assert "\n" not in message and name in message, message


# -- digits ----------------------------------------------------------------------------------


def test_digits_registered() -> None:
    assert {"digits", "digits16"} <= {e.name for e in DATASETS}


def test_digits_match_scikit_learn() -> None:
    d = load_dataset("digits", 10_000)
    ref = sklearn_datasets.load_digits()
    assert d.x.shape == (1797, 1, 8, 8) and d.event_shape == (1, 8, 8)
    assert d.x.dtype == torch.float32 and d.num_classes == 10
    assert d.x.min() == -1 and d.x.max() == 1
    # Pixel values 0…16 become v/8 − 1 exactly; labels are scikit-learn's.
    torch.testing.assert_close(d.x[:, 0].double(), torch.from_numpy(ref.images) / 8 - 1)
    assert torch.equal(d.labels, torch.from_numpy(ref.target))
    assert torch.bincount(d.labels).min() > 170  # ~180 per digit


def test_digits16_is_bilinear_resize() -> None:
    """Against Pillow's bilinear resize of each 8×8 float image (an independent route)."""
    d16 = load_dataset("digits16", 10_000)
    d8 = load_dataset("digits", 10_000)
    assert d16.x.shape == (1797, 1, 16, 16) and torch.equal(d16.labels, d8.labels)
    assert d16.x.min() >= -1 and d16.x.max() <= 1
    for i in (0, 500, 1796):
        ref = Image.fromarray(d8.x[i, 0].numpy()).resize((16, 16), Image.BILINEAR)
        np.testing.assert_allclose(d16.x[i, 0].numpy(), np.asarray(ref), atol=1e-6)


def test_digit_subsets_and_flip() -> None:
    full = load_dataset("digits", 5000)
    a, b, c = (load_dataset("digits", 100, seed=s) for s in (3, 3, 4))
    assert len(a) == 100 and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    # A subset is made of rows of the full set, with their labels.
    match = (a.x.flatten(1)[:, None] == full.x.flatten(1)[None]).all(-1)
    rows = match.float().argmax(1)
    assert match.any(1).all() and torch.equal(full.labels[rows], a.labels)
    f = load_dataset("digits", 100, seed=3, flip=True)
    assert len(f) == 200 and f.info["flip"] is True
    assert torch.equal(f.x[:100], a.x) and torch.equal(f.x[100:], a.x.flip(-1))
    assert torch.equal(f.labels, torch.cat([a.labels, a.labels]))


# -- image folders ---------------------------------------------------------------------------


def test_folder_round_trip_with_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for cls in ("zebra", "ant"):  # labels follow sorted names: ant 0, zebra 1
        for k in range(3):
            a = rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8)
            arrays[(cls, k)] = a
            _png(tmp_path / "data" / cls / f"{k}.png", a)
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    d = load_dataset(str(tmp_path / "data"), 100)
    assert d.x.shape == (6, 3, 8, 6) and d.info["classes"] == ["ant", "zebra"]
    assert d.x.min() >= -1 and d.x.max() <= 1
    expected = np.stack([arrays[(c, k)] for c in ("ant", "zebra") for k in range(3)])
    pixels = ((d.x.permute(0, 2, 3, 1) + 1) * 127.5).round().numpy().astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)
    assert d.labels.tolist() == [0, 0, 0, 1, 1, 1] and d.num_classes == 2


def test_flat_folder_is_unlabelled_grayscale(tmp_path: Path) -> None:
    for k in range(4):
        _png(tmp_path / f"{k}.png", np.full((4, 4), 60 * k, np.uint8))
    d = load_folder(tmp_path, flip=True)
    assert d.x.shape == (8, 1, 4, 4) and d.labels is None and d.info["classes"] == []
    assert d.x[0].max() == -1 and d.x[3].min() == pytest.approx(180 / 127.5 - 1)


def test_folder_errors_name_the_file(tmp_path: Path) -> None:
    ok = np.zeros((8, 8, 3), np.uint8)
    _png(tmp_path / "sizes" / "a.png", ok)
    _png(tmp_path / "sizes" / "b.png", np.zeros((9, 8, 3), np.uint8))
    _png(tmp_path / "modes" / "a.png", ok)
    _png(tmp_path / "modes" / "b.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "corrupt" / "a.png", ok)
    (tmp_path / "corrupt" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = _png(
        tmp_path / "truncated" / "a.png",
        (np.arange(64 * 3).reshape(8, 8, 3) % 256).astype(np.uint8),
    )
    cut = good.read_bytes()
    (tmp_path / "truncated" / "b.png").write_bytes(cut[: len(cut) // 2])
    _png(tmp_path / "mixed" / "top.png", ok)
    _png(tmp_path / "mixed" / "cls" / "a.png", ok)
    (tmp_path / "empty").mkdir()
    cases = {
        "sizes": "b.png",
        "modes": "b.png",
        "corrupt": "b.png",
        "truncated": "b.png",
        "mixed": "top.png",
        "empty": "empty",
    }
    for folder, name in cases.items():
        with pytest.raises(DataError) as err:
            load_dataset(str(tmp_path / folder), 10)
        _one_line_naming(err, name)


# -- arrays ----------------------------------------------------------------------------------


def test_uint8_arrays_scale_and_nan_is_named(tmp_path: Path) -> None:
    pixels = np.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4).astype(np.uint8)
    np.savez(tmp_path / "img.npz", x=pixels, labels=np.array([0, 1]))
    d = load_dataset(str(tmp_path / "img.npz"), 10)
    assert d.event_shape == (3, 4, 4) and d.info["scale"] == "uint8 v/127.5 - 1"
    torch.testing.assert_close(d.x, torch.from_numpy(pixels).float() / 127.5 - 1)
    floats = pixels.astype(np.float32)
    np.savez(tmp_path / "float.npz", x=floats)
    assert torch.equal(load_dataset(str(tmp_path / "float.npz"), 10).x, torch.from_numpy(floats))
    floats[1, 2, 3, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=floats)
    with pytest.raises(DataError) as err:
        load_dataset(str(tmp_path / "nan.npz"), 10)
    _one_line_naming(err, "nan.npz")


# -- through the CLI -------------------------------------------------------------------------


def test_cli_bad_images_are_one_line_exit_2(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from physgen.cli import cli

    _png(tmp_path / "imgs" / "a.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "imgs" / "b.png", np.zeros((8, 4), np.uint8))
    (tmp_path / "bad").mkdir()
    _png(tmp_path / "bad" / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "bad" / "b.png").write_bytes(b"not a png")
    nan = np.zeros((4, 1, 8, 8), np.float32)
    nan[2, 0, 1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=nan)
    runner = CliRunner()
    for dataset, name in (("imgs", "b.png"), ("bad", "b.png"), ("nan.npz", "nan.npz")):
        result = runner.invoke(
            cli, ["train", "--dataset", str(tmp_path / dataset), "--out", str(tmp_path / "run")]
        )
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and "Traceback" not in result.output
        assert not (tmp_path / "run").exists()
