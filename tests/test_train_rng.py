"""The trainer's handling of torch's global RNG: dropout (which can draw from nowhere else) is
seeded per step from the run's seed (physgen.training.seeding), so resume is bitwise with
dropout and training leaves the caller's global RNG as it found it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from physgen.api import get_network, get_process
from physgen.training import train
from physgen.training.seeding import seeded_global_rng

OPTS: dict[str, Any] = dict(batch_size=4, lr=2e-3, progress=False, log_every=2)


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data() -> SimpleNamespace:
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    return SimpleNamespace(x=x, name="noise8")


def _unet(dropout: float) -> nn.Module:
    return get_network("unet", (1, 8, 8), preset="tiny", dropout=dropout)


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_dropout_stream_is_a_function_of_seed_shard_and_step() -> None:
    """The global-RNG draws inside ``seeded_global_rng`` depend on (seed, shard, step) only:
    the same triple repeats them whatever the global state was, changing any one changes them,
    and the caller's global state is restored."""
    cpu = torch.device("cpu")

    def draw(seed: int, shard: int, step: int) -> Tensor:
        torch.manual_seed(seed * 1000 + step)  # a different global state each call
        with seeded_global_rng(seed, shard, step, cpu):
            return torch.rand(8)

    base = draw(0, 0, 5)
    assert torch.equal(draw(0, 0, 5), base)
    for other in ((1, 0, 5), (0, 1, 5), (0, 0, 6)):
        assert not torch.equal(draw(*other), base), other
    torch.manual_seed(7)
    before = torch.get_rng_state()
    with seeded_global_rng(0, 0, 5, cpu):
        torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)


def test_dropout_resume_is_bitwise_exact(tmp_path: Path) -> None:
    """N steps straight equal N/2 + resume N/2 with dropout on, whatever the global RNG was
    seeded to before each call (each call below starts from a different global seed)."""
    n, path = 4, tmp_path / "c.safetensors"
    torch.manual_seed(1)
    straight = train(get_process("edm"), _unet(0.3), _data(), steps=n, **OPTS)
    torch.manual_seed(2)
    train(get_process("edm"), _unet(0.3), _data(), steps=n // 2, checkpoint=path, **OPTS)
    torch.manual_seed(3)
    resumed = train(get_process("edm"), _unet(0.3), _data(), steps=n, checkpoint=path,
                    resume=True, **OPTS)  # fmt: skip
    assert np.array_equal(resumed.losses, straight.losses)
    _assert_same_weights(resumed.net, straight.net)
    _assert_same_weights(resumed.ema, straight.ema)
    # Not vacuous: the dropout masks change the run (same seed, dropout off; step 0 alone
    # would not show it, the untrained net's output is ≈ 0 with or without masks).
    plain = train(get_process("edm"), _unet(0.0), _data(), steps=2, **OPTS)
    assert not np.array_equal(plain.losses, straight.losses[:2])


def test_training_leaves_the_global_rng_unchanged() -> None:
    process, net, data = get_process("edm"), _unet(0.3), _data()  # layer init draws from it
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train(process, net, data, steps=2, **OPTS)
    assert torch.equal(torch.get_rng_state(), before)
