"""Latent mode (physgen.training.latent): autoencoder round trips, unit-std latents, and a process
trained and sampled in latent space end to end through a checkpoint."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from physgen.api import get_network, get_process, load_checkpoint
from physgen.errors import CheckpointError, ConfigError
from physgen.nets.autoencoder import ConvAutoencoder, MLPAutoencoder
from physgen.training import train
from physgen.training.latent import encode_dataset, fit_autoencoder, load_codec, save_codec


def _plane_data(n: int = 2048, dim: int = 8) -> tuple[Tensor, Tensor]:
    """Points of a 2-D ring embedded linearly in R^dim: x = u Aᵀ, A with orthonormal columns.
    Returns the data and A."""
    g = torch.Generator().manual_seed(0)
    A, _ = torch.linalg.qr(torch.randn(dim, 2, generator=g))
    angle = 2 * torch.pi * torch.rand(n, generator=g)
    u = torch.stack([angle.cos(), angle.sin()], 1) + 0.05 * torch.randn(n, 2, generator=g)
    return u @ A.T, A


def _blobs(n: int = 256) -> Tensor:
    """8×8 one-channel images of a Gaussian blob at a random position, in [−1, 1]."""
    g = torch.Generator().manual_seed(0)
    centre = 2 + 4 * torch.rand(n, 2, generator=g)
    grid = torch.arange(8.0)
    cy, cx = centre[:, 0, None, None], centre[:, 1, None, None]
    d2 = (grid[None, :, None] - cy) ** 2 + (grid[None, None, :] - cx) ** 2  # [n, 8, 8]
    return (2 * torch.exp(-d2 / 4) - 1)[:, None]


def test_shapes() -> None:
    conv = ConvAutoencoder(3, latent_channels=4, width=8, down=2)
    x = torch.randn(5, 3, 16, 8)
    z = conv.encode(x)
    assert z.shape == (5, 4, 4, 2) and conv.decode(z).shape == x.shape
    mlp = MLPAutoencoder(6, latent_dim=3, width=16)
    assert mlp.encode(torch.randn(4, 6)).shape == (4, 3)
    assert mlp.decode(mlp.encode(torch.randn(4, 6))).shape == (4, 6)
    with pytest.raises(ValueError, match="divisible"):
        conv.encode(torch.randn(1, 3, 6, 8))


def test_mlp_round_trip_recovers_a_plane() -> None:
    """Data on a 2-D plane in R^8: a 2-D latent reconstructs it to a small fraction of its
    variance, and the latents have zero mean and unit standard deviation."""
    x, _ = _plane_data()
    codec = fit_autoencoder(x, kind="mlp", config={"latent_dim": 2, "width": 64}, steps=200)
    with torch.no_grad():
        z = codec.encode(x)
        err = (codec.decode(z) - x).pow(2).mean() / x.var(0).sum() * x.shape[1]
    assert z.shape == (x.shape[0], 2) and codec.latent_shape == (2,)
    assert float(err) < 0.01
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-4


def test_conv_round_trip_on_images() -> None:
    x = _blobs()
    codec = fit_autoencoder(
        x, config={"latent_channels": 2, "width": 8}, steps=100, batch_size=64
    )  # fmt: skip
    with torch.no_grad():
        z = codec.encode(x)
        err = (codec.decode(z) - x).pow(2).mean() / x.var()
    assert codec.name == "conv" and z.shape == (len(x), 2, 4, 4)
    assert float(err) < 0.1


def test_fit_is_seeded_and_leaves_global_rng_alone() -> None:
    x, _ = _plane_data(256)
    state = torch.random.get_rng_state()
    a = fit_autoencoder(x, steps=5, seed=3)
    b = fit_autoencoder(x, steps=5, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_latent_file_round_trip(tmp_path) -> None:
    x, _ = _plane_data(256)
    codec = fit_autoencoder(x, steps=20)
    loaded = load_codec(save_codec(tmp_path / "ae.safetensors", codec))
    assert loaded.meta() == codec.meta()
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(codec.encode(x)), codec.decode(codec.encode(x)))


@pytest.mark.slow
def test_latent_mode_train_and_sample_end_to_end(tmp_path) -> None:
    """EDM in the 2-D latent space of data on a plane in R^8: decoded samples lie on the
    plane (the orthogonal residual is small next to the data's spread) and on the ring."""
    x, A = _plane_data()
    codec = fit_autoencoder(x, config={"latent_dim": 2, "width": 64}, steps=200)
    data = SimpleNamespace(x=x, name="plane")
    process = get_process("edm", sigma_data=1.0)
    net = get_network("mlp", codec.latent_shape, width=64, depth=2)
    ckpt_path = tmp_path / "ckpt.safetensors"
    train(
        process, net, data, steps=400, batch_size=128, lr=3e-3, progress=False,
        checkpoint=ckpt_path, latent=codec,
    )  # fmt: skip
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.latent is not None and ckpt.event_shape == (2,)
    out = ckpt.sample(n=500, steps=12)
    assert out.x.shape == (500, 8)
    residual = out.x - (out.x @ A) @ A.T
    assert float(residual.norm(dim=1).median()) < 0.15  # the data's radius is 1
    radius = (out.x @ A).norm(dim=1)
    assert 0.8 < float(radius.median()) < 1.2
    from click.testing import CliRunner

    from physgen.cli import cli

    args = ["sample", str(ckpt_path), "-n", "8", "--nll", "8", "--out", str(tmp_path / "s.h5")]
    result = CliRunner().invoke(cli, args)  # latents have no data-space density: refused
    assert result.exit_code == 2 and "no data-space likelihood" in result.output
    assert not (tmp_path / "s.h5").exists()


def test_user_module_needs_to_be_passed_back(tmp_path) -> None:
    class Halve(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.5))

        def encode(self, x: Tensor) -> Tensor:
            return x * self.w

        def decode(self, z: Tensor) -> Tensor:
            return z / self.w

    x, _ = _plane_data(256)
    data = SimpleNamespace(x=x, name="plane")
    path = tmp_path / "c.safetensors"
    train(
        get_process("edm"), get_network("mlp", (8,), width=16, depth=1), data, steps=2,
        batch_size=8, progress=False, checkpoint=path, latent=Halve(),
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="autoencoder="):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, autoencoder=Halve())
    z = ckpt.latent.encode(x)
    assert abs(float(z.std()) - 1) < 1e-4  # scaled to unit std on the data
    torch.testing.assert_close(ckpt.latent.decode(z), x)


def test_wrong_shape_and_kind() -> None:
    x, _ = _plane_data(64)
    with pytest.raises(ConfigError, match="does not fit"):
        fit_autoencoder(x, kind="conv", steps=1)
    codec = fit_autoencoder(x, steps=1)
    with pytest.raises(ConfigError, match="shape"):
        encode_dataset(SimpleNamespace(x=torch.randn(4, 5)), codec)
