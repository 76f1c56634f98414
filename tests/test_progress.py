"""The long phases of the CLI show a progress bar on stderr (as training does), and ``-q``
hides it: autoencoder pre-training (``--latent ae``), reflow pair generation
(``--reflow-from``) and the likelihood (``sample --nll``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

TINY = [
    "--n-data", "64", "--steps", "2", "--batch-size", "16", "--net-opt", "width=16",
    "--net-opt", "depth=1", "--device", "cpu",
]  # fmt: skip


def physgen(*args: str) -> Result:
    from physgen.cli import cli

    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("progress") / "edm"
    physgen("train", *TINY, "-q", "--out", str(out))
    return out / "checkpoint.safetensors"


def bars(stderr: str, desc: str) -> list[str]:
    """The finished tqdm lines of the bar named ``desc``."""
    return [
        seg for seg in stderr.replace("\r", "\n").splitlines() if seg.startswith(f"{desc}: 100%")
    ]


@pytest.mark.parametrize("quiet", [False, True])
def test_autoencoder_pretraining_shows_a_bar(tmp_path: Path, quiet: bool) -> None:
    q = ["-q"] if quiet else []
    r = physgen("train", *TINY, *q, "--latent", "ae", "--out", str(tmp_path / "latent"))
    done = bars(r.stderr, "autoencoder")
    assert (not done) if quiet else ("2000/2000" in done[-1]), r.stderr[-500:]


@pytest.mark.parametrize("quiet", [False, True])
def test_reflow_pair_generation_shows_a_bar(teacher: Path, tmp_path: Path, quiet: bool) -> None:
    q = ["-q"] if quiet else []
    r = physgen(
        "train", "-p", "rectified", "--reflow-from", str(teacher), "--reflow-pairs", "48",
        "--reflow-sampler", "euler", *TINY, *q, "--out", str(tmp_path / "reflow"),
    )  # fmt: skip
    done = bars(r.stderr, "reflow pairs")
    assert (not done) if quiet else ("48/48" in done[-1]), r.stderr[-500:]


@pytest.mark.parametrize("quiet", [False, True])
def test_nll_shows_a_bar(teacher: Path, tmp_path: Path, quiet: bool) -> None:
    q = ["-q"] if quiet else []
    r = physgen(
        "sample", str(teacher), "-n", "8", "--steps", "2", "--no-metrics", "--straightness",
        "0", "--nll", "6", "--device", "cpu", *q, "--out", str(tmp_path / "s.h5"),
    )  # fmt: skip
    done = bars(r.stderr, "nll")
    assert (not done) if quiet else ("6/6" in done[-1]), r.stderr[-500:]
