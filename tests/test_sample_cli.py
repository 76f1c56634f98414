"""``physgen sample`` on class-conditional checkpoints: guidance is refused where the model
cannot be guided, and each sample's class label is stored in the run file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from physgen.io import read_run

TINY = [
    "--n-data", "64", "--steps", "2", "--batch-size", "16", "--net-opt", "width=16",
    "--net-opt", "depth=1", "--device", "cpu", "-q",
]  # fmt: skip
SAMPLE = ["-n", "10", "--steps", "2", "--no-metrics", "--straightness", "0", "--device", "cpu"]


def physgen(*args: str) -> Result:
    from physgen.cli import cli

    return CliRunner().invoke(cli, list(args))


def assert_user_error(result: Result, *fragments: str) -> None:
    """One line on stderr naming the problem, exit status 2, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny moons models: unconditional, class-conditional without label dropout, and with it."""
    root = tmp_path_factory.mktemp("cond")
    out = {}
    for name, extra in {
        "uncond": [],
        "cond": ["--class-cond"],
        "dropout": ["--label-dropout", "0.2"],
    }.items():
        r = physgen("train", *TINY, *extra, "--out", str(root / name))
        assert r.exit_code == 0, r.output
        out[name] = root / name / "checkpoint.safetensors"
    return out


def test_guidance_needs_a_model_trained_with_label_dropout(checkpoints: dict[str, Path]) -> None:
    r = physgen("sample", str(checkpoints["uncond"]), *SAMPLE, "--guidance", "3", "-q")
    assert_user_error(r, "--guidance 3", "unconditional", "--label-dropout")
    r = physgen("sample", str(checkpoints["cond"]), *SAMPLE, "--guidance", "3", "-q")
    assert_user_error(r, "--guidance 3", "without label dropout", "--label-dropout")
    assert not list(checkpoints["cond"].parent.glob("samples-*.h5"))
    # w = 1 is the plain conditional model: no unconditional one needed.
    r = physgen("sample", str(checkpoints["cond"]), *SAMPLE, "-q")
    assert r.exit_code == 0, r.output
    r = physgen("sample", str(checkpoints["dropout"]), *SAMPLE, "--guidance", "3", "-q")
    assert r.exit_code == 0, r.output


def test_class_labels_are_stored_beside_the_samples(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    runs = {
        "cycle": [],
        "one": ["--class", "1"],
    }
    for name, extra in runs.items():
        r = physgen(
            "sample", str(checkpoints["dropout"]), *SAMPLE, *extra, "--guidance", "2", "-q",
            "--out", str(tmp_path / f"{name}.h5"),
        )  # fmt: skip
        assert r.exit_code == 0, r.output
    cycle = read_run(tmp_path / "cycle.h5")
    assert cycle.labels["samples"].tolist() == [0, 1] * 5  # moons has two classes
    assert len(cycle.labels["samples"]) == len(cycle.samples["samples"][0])
    assert read_run(tmp_path / "one.h5").labels["samples"].tolist() == [1] * 10
    r = physgen(
        "sample", str(checkpoints["uncond"]), *SAMPLE, "-q", "--out", str(tmp_path / "u.h5")
    )
    assert r.exit_code == 0, r.output
    assert read_run(tmp_path / "u.h5").labels == {}
