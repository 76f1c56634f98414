"""One-call lookups: processes, networks and checkpoints by name, with typed results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from physgen.core import validate as _v
from physgen.core.options import parse_options, typed_options
from physgen.core.process import Process
from physgen.errors import CheckpointError, ConfigError, PhysgenError
from physgen.registry import get_registry, plugin_call

__all__ = ["Checkpoint", "get_network", "get_process", "load_checkpoint"]


def get_process(name: str, **options: Any) -> Process:
    """The registered process ``name`` with ``options`` (values may be strings, as from
    ``-o key=value``); unknown names and options are one-line :class:`ConfigError`."""
    registry = get_registry()
    entry = registry.process(_v.check_str("name", name))
    with plugin_call(registry.plugin_of("processes", name), f"process {name!r}"):
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
    event_shape = _v.check_shape("event_shape", event_shape)
    num_classes = _v.check_int("num_classes", num_classes, min=0)
    registry = get_registry()
    entry = registry.network(_v.check_str("name", name))
    merged = {**entry.config, **typed_options(f"network {name!r}", config, entry.config)}
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer ≥ 0, got {seed!r}")
    with plugin_call(registry.plugin_of("networks", name), f"network {name!r}") as call:
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                net: nn.Module = entry.factory(tuple(event_shape), num_classes, **merged)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"network {name!r}: {err}") from None
        if not isinstance(net, nn.Module):
            raise call.error(f"returned {type(net).__name__}, expected a torch.nn.Module")
        _check_backbone(net, tuple(event_shape), call, int(merged.get("noise_labels", 1)))
    # What a checkpoint needs to rebuild this network by name (see physgen.training.describe).
    net.registry_name = name  # type: ignore[assignment]
    net.registry_config = merged  # type: ignore[assignment]
    return net


def _check_backbone(
    net: nn.Module, event_shape: tuple[int, ...], call: plugin_call, noise_labels: int = 1
) -> None:
    """One forward pass on a batch of two zeros (eval mode, no gradients, so no state or RNG
    changes): a backbone returns a tensor shaped like its input ``x``. ``noise_labels``: per
    example (``[2]``, or ``[2, k]`` for a flow map's backbone)."""
    param = next(net.parameters(), None)
    like = param if param is not None and param.is_floating_point() else torch.zeros(())
    x = torch.zeros(2, *event_shape, device=like.device, dtype=like.dtype)
    mode = [m.training for m in net.modules()]
    net.eval()
    try:
        with torch.no_grad():
            shape = (2,) if noise_labels == 1 else (2, noise_labels)
            out = net(x, torch.full(shape, 0.5, device=x.device), None)
    finally:
        for m, training in zip(net.modules(), mode, strict=True):
            m.training = training
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise call.error(
            f"returns {got} for input {list(x.shape)}; a backbone returns the shape of x"
        )


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

    path = Path(_v.check_path("path", path))
    raw = load_checkpoint_file(path)
    meta = raw.meta
    try:
        proc_meta, net_meta, data_meta = meta["process"], meta["network"], meta["dataset"]
        event_shape = tuple(int(d) for d in data_meta["event_shape"])
        num_classes = int(net_meta.get("num_classes", 0))
        # options a process has since moved to sampling (its RETIRED_OPTIONS) are dropped,
        # so older checkpoints still load
        retired = getattr(get_registry().process(proc_meta["name"]).cls, "RETIRED_OPTIONS", ())
        options = {k: v for k, v in proc_meta["options"].items() if k not in retired}
        process = get_process(proc_meta["name"], **options)
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
