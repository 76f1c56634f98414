"""One-call lookups: processes, networks and checkpoints by name, with typed results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from physgen.core.process import Process, convert_value, parse_options
from physgen.errors import CheckpointError, ConfigError, PhysgenError
from physgen.registry import get_registry

__all__ = ["Checkpoint", "get_network", "get_process", "load_checkpoint"]


def get_process(name: str, **options: Any) -> Process:
    """The registered process ``name`` with ``options`` (values may be strings, as from
    ``-o key=value``); unknown names and options are one-line :class:`ConfigError`."""
    entry = get_registry().process(name)
    opts = parse_options(entry.cls.Options, options, owner=f"process {name!r}")
    process: Process = entry.cls(opts)
    process.registry_name = name  # type: ignore[assignment]
    return process


def get_network(
    name: str,
    event_shape: tuple[int, ...],
    num_classes: int = 0,
    *,
    seed: int = 0,
    process: Process | None = None,
    **config: Any,
) -> nn.Module:
    """The registered backbone ``name`` for data of ``event_shape``; ``config`` overrides the
    network's defaults (unknown keys are a one-line :class:`ConfigError`).

    The initial weights are a function of ``seed``: layers draw their initialisation from
    torch's global CPU generator, so it is seeded here inside ``torch.random.fork_rng`` and the
    caller's global RNG state is left as it was. ``process``: the process the net will serve;
    one that reads two noise labels per example (a flow map's pair of times,
    :attr:`~physgen.core.process.Process.noise_labels`) gets a backbone built for them."""
    if process is not None and process.noise_labels != 1:
        config = {**config, "noise_labels": process.noise_labels}
    entry = get_registry().network(name)
    unknown = set(config) - set(entry.config)
    if unknown:
        known = ", ".join(entry.config) or "none"
        raise ConfigError(f"network {name!r} has no option {sorted(unknown)[0]!r} ({known})")
    merged = {**entry.config, **_typed(config, entry.config)}
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer ≥ 0, got {seed!r}")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            net: nn.Module = entry.factory(tuple(event_shape), num_classes, **merged)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"network {name!r}: {err}") from None
    # What a checkpoint needs to rebuild this network by name (see physgen.training.describe).
    net.registry_name = name  # type: ignore[assignment]
    net.registry_config = merged  # type: ignore[assignment]
    return net


def _typed(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """String values (``--net-opt width=256``) converted to the type of the default."""
    return {
        k: convert_value(v, defaults.get(k), name=k, owner="network") for k, v in values.items()
    }


@dataclass
class Checkpoint:
    """A trained model, ready to sample: what :func:`load_checkpoint` returns."""

    path: Path
    process: Process
    #: the backbone with the raw (online) weights, as training left them
    net: nn.Module
    #: the backbone with the EMA weights (what sampling uses), in eval mode
    ema: nn.Module
    event_shape: tuple[int, ...]
    num_classes: int
    step: int
    meta: dict[str, Any]
    #: the autoencoder of a latent-mode run (``event_shape`` is then the latent shape and
    #: :meth:`sample` decodes), else None
    latent: Any = None

    @property
    def process_name(self) -> str:
        return str(self.meta["process"]["name"])

    def sample(self, n: int = 1024, **kwargs: Any) -> Any:
        """Shorthand for :func:`physgen.sampling.sample` with this checkpoint's model; in latent
        mode the samples are decoded to data space."""
        import dataclasses

        from physgen.sampling import sample

        out = sample(self.process, self.ema, self.event_shape, n=n, **kwargs)
        if self.latent is not None:
            with torch.no_grad():
                x = self.latent.to(out.x.device).decode(out.x)
            out = dataclasses.replace(out, x=x)
        return out


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu", autoencoder: nn.Module | None = None
) -> Checkpoint:
    """Load a checkpoint written by :func:`physgen.train`; never executes code from the file.

    The process and network are rebuilt by name through the registry from the file's JSON
    metadata, then the weights are loaded from its safetensors tensors. A latent-mode
    checkpoint also rebuilds its autoencoder (``autoencoder`` supplies the module when it was
    not a registered one; :func:`physgen.training.latent.codec_from_checkpoint`).
    """
    from physgen.io import load_checkpoint_file
    from physgen.training.latent import codec_from_checkpoint

    path = Path(path)
    raw = load_checkpoint_file(path)
    meta = raw.meta
    try:
        proc_meta, net_meta, data_meta = meta["process"], meta["network"], meta["dataset"]
        event_shape = tuple(int(d) for d in data_meta["event_shape"])
        num_classes = int(net_meta.get("num_classes", 0))
        process = get_process(proc_meta["name"], **proc_meta["options"])
        net = get_network(net_meta["name"], event_shape, num_classes, **net_meta["config"])
        ema = get_network(net_meta["name"], event_shape, num_classes, **net_meta["config"])
    except PhysgenError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, MemoryError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: checkpoint metadata is incomplete or invalid ({first})"
        ) from None
    try:
        net.load_state_dict(raw.net)
        ema.load_state_dict(raw.ema or raw.net)
        process.setup(net)
        if raw.process:
            process.load_state_dict(raw.process)
    except (RuntimeError, KeyError) as err:
        from physgen.io._common import first_line

        raise CheckpointError(
            f"{path}: weights do not fit the network ({first_line(err)})"
        ) from None
    latent = codec_from_checkpoint(raw, autoencoder)
    for m in (net, ema, process, latent):
        if m is not None:
            m.to(device)
    ema.eval()
    return Checkpoint(
        path=path,
        process=process,
        net=net,
        ema=ema,
        event_shape=event_shape,
        num_classes=num_classes,
        step=int(meta.get("step", 0)),
        meta=meta,
        latent=latent,
    )
