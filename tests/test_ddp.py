"""Distributed training (physgen.training.distributed): a 2-process gloo DDP run equals one process
with the same global batch split into the same two shards, and its checkpoint resumes in
one process exactly where the DDP run left off; with data in memory and streamed (each rank
reads only its rows of every global batch)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from physgen.api import get_network, get_process
from physgen.data.loader import Streamed
from physgen.io import load_checkpoint_file, read_run
from physgen.training import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
]

STEPS = 6
OPTS: dict[str, Any] = dict(batch_size=16, lr=1e-2, progress=False, log_every=3, seed=5)


def _setup(kind: str = "memory") -> tuple[Any, Any, Any]:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(3, (64,), generator=g)
    data: Any = SimpleNamespace(x=torch.randn(64, 2, generator=g), labels=labels, name="toy")
    if kind == "stream":  # fresh 8gaussians draws each step, labelled by mode
        data = Streamed("8gaussians")
    net = get_network("mlp", (2,), num_classes=8 if kind == "stream" else 3, width=16, depth=1)
    with torch.no_grad():  # identical, deterministic start on every rank
        for i, p in enumerate(net.parameters()):
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    return get_process("edm"), net, data


def _worker(rank: int, world: int, store: str, out: str, kind: str) -> None:
    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        process, net, data = _setup(kind)
        ckpt = Path(out) / "ddp.safetensors"
        train(process, net, data, steps=STEPS, checkpoint=ckpt, label_dropout=0.2, **OPTS)
        torch.save({k: v.clone() for k, v in net.state_dict().items()}, Path(out) / f"r{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_two_rank_gloo_equals_one_process(tmp_path: Path, kind: str) -> None:
    args = (2, str(tmp_path / "store"), str(tmp_path), kind)
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "r0.pt")
    rank1 = torch.load(tmp_path / "r1.pt")
    process, net, data = _setup(kind)
    single = train(process, net, data, steps=STEPS, shards=2, label_dropout=0.2, **OPTS)
    one = single.net.state_dict()
    for key, value in one.items():
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)  # ranks agree
        torch.testing.assert_close(rank0[key], value, rtol=1e-5, atol=1e-6)
    raw = load_checkpoint_file(tmp_path / "ddp.safetensors")
    assert {"data", "loss", "loss1"} <= set(raw.rng)
    assert raw.meta["train"]["world_size"] == 2 and raw.meta["train"]["shards"] == 2
    # The DDP loss curve is the global-batch mean, as the single process logs it.
    torch.testing.assert_close(
        torch.from_numpy(raw.extra["losses"].numpy()), torch.from_numpy(single.losses),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip

    # Resume the DDP checkpoint in one process (2 shards): same as never stopping.
    process, net, data = _setup(kind)
    resumed = train(
        process, net, data, steps=2 * STEPS, shards=2, label_dropout=0.2,
        checkpoint=tmp_path / "ddp.safetensors", resume=True, **OPTS,
    )  # fmt: skip
    process, net, data = _setup(kind)
    straight = train(process, net, data, steps=2 * STEPS, shards=2, label_dropout=0.2, **OPTS)
    for key, value in straight.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_shards_must_divide_the_batch() -> None:
    from physgen.errors import ConfigError

    process, net, data = _setup()
    with pytest.raises(ConfigError, match="multiple of shards"):
        train(process, net, data, steps=1, shards=3, **OPTS)


def _torchrun() -> list[str]:
    """The venv's ``torchrun`` script (the documented command), else its module form."""
    script = Path(sys.executable).with_name("torchrun")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "torch.distributed.run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_documented_torchrun_command_equals_one_process_with_two_shards(tmp_path: Path) -> None:
    """docs/workflows.md's ``torchrun --nproc-per-node 2 -m physgen train ...``, run for real
    (2 gloo ranks on the CPU), equals ``physgen train --shards 2`` in one process."""
    args = [
        "train", "-d", "moons", "--n-data", "64", "--steps", "6", "--batch-size", "16",
        "--lr", "1e-2", "--net-opt", "width=16", "--net-opt", "depth=1",
        "--checkpoint-every", "3", "--seed", "5", "--device", "cpu", "-q",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = str(_free_port())
    ddp = [*_torchrun(), "--nproc-per-node", "2", "--master-port", port, "-m", "physgen"]
    for cmd in (
        [*ddp, *args, "--out", str(tmp_path / "ddp")],
        ["physgen", *args, "--shards", "2", "--out", str(tmp_path / "one")],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    two = load_checkpoint_file(tmp_path / "ddp" / "checkpoint.safetensors")
    one = load_checkpoint_file(tmp_path / "one" / "checkpoint.safetensors")
    assert two.meta["train"]["world_size"] == 2 and one.meta["train"]["world_size"] == 1
    assert two.step == one.step == 6
    for group in ("net", "ema"):
        assert getattr(two, group).keys() == getattr(one, group).keys()
        for key, value in getattr(one, group).items():
            torch.testing.assert_close(getattr(two, group)[key], value, rtol=1e-5, atol=1e-5)
    loss_two = read_run(tmp_path / "ddp" / "train.h5").loss
    loss_one = read_run(tmp_path / "one" / "train.h5").loss
    assert loss_two is not None and loss_one is not None and len(loss_one) == 6
    np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5, atol=1e-5)
