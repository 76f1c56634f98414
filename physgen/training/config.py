"""The options of a training run, each declared once: :class:`TrainConfig`.

A field's ``metadata`` (written by :func:`option`) holds everything a surface needs: the
one-line help, the range (``min``/``max``, open or closed), the allowed ``choices``, a CLI short
flag, and whether a resumed run must repeat the value. From it come the ``physgen train`` flags
and ``PHYSGEN_TRAIN_*`` variables (:mod:`physgen.cli.options`), the ``[train]`` keys of a
``--config`` file (:mod:`physgen.cli.config`), the keyword arguments of :func:`physgen.train`
and the bench suite's ``[train]`` budget. :func:`check_value` is the one validation: no
coercion (``5.9`` or ``True`` is not an int, ``1e400`` is not a finite float), one line naming
the option. This module imports neither torch nor click.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from physgen.errors import ConfigError

__all__ = [
    "TrainConfig",
    "check_value",
    "config_from",
    "field_types",
    "option",
    "range_text",
    "validate",
]


def option(
    default: Any, help: str, *, short: str | None = None, flag: str | None = None,
    min: float | None = None, max: float | None = None, min_open: bool = False,
    max_open: bool = False, choices: tuple[str, ...] | None = None, resume: str = "match",
    cli: bool = True, words: tuple[str, ...] = (),
) -> Any:  # fmt: skip
    """A dataclass field with its declaration: ``help`` (one line), an optional ``short`` CLI
    flag (``"-p"``), ``flag`` when the long flag is not the field name (``"--option"``), the
    range and ``choices``; ``resume="free"`` for budget-like options a resumed run may change
    (``"match"``: it must repeat the checkpoint's value); ``cli=False`` keeps it off the CLI;
    ``words`` are strings a numeric option also takes (``--n-data stream``)."""
    meta = dict(help=help, short=short, flag=flag, min=min, max=max, min_open=min_open,
                max_open=max_open, choices=choices, resume=resume, cli=cli,
                words=words)  # fmt: skip
    return dataclasses.field(default=default, metadata=meta)


def field_types(cls: type) -> dict[str, tuple[Any, bool]]:
    """``{name: (base type, optional)}`` of a config dataclass: ``int | None`` is
    ``(int, True)``, ``tuple[str, ...]`` is ``(tuple[str, ...], False)``."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint)
        if type(None) in args and typing.get_origin(hint) is not tuple:
            rest = [a for a in args if a is not type(None)]
            out[name] = (rest[0], True)
        else:
            out[name] = (hint, False)
    return out


def range_text(meta: Mapping[str, Any]) -> str:
    """A field's range in words: ``"≥ 1"``, ``"> 0"``, ``"in [0, 1)"``; ``""`` for none."""
    lo, hi = meta.get("min"), meta.get("max")
    lo, hi = (v if v is None or isinstance(v, int) else float(v) for v in (lo, hi))
    if lo is not None and hi is not None:
        left, right = "(" if meta["min_open"] else "[", ")" if meta["max_open"] else "]"
        return f"in {left}{lo}, {hi}{right}"
    if lo is not None:
        return f"{'>' if meta['min_open'] else '≥'} {lo}"
    if hi is not None:
        return f"{'<' if meta['max_open'] else '≤'} {hi}"
    return ""


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta["min_open"] and value == lo)):
        return False
    return not (hi is not None and (value > hi or (meta["max_open"] and value == hi)))


def check_value(name: str, value: Any, base: Any, optional: bool, meta: Mapping[str, Any]) -> Any:
    """``value`` checked against a field's type and metadata, else one-line ConfigError.

    No coercion: an int field takes an int (not ``5.9``, not ``True``), a float field a finite
    int or float (returned as float), a bool field a bool, a ``tuple[str, ...]`` field a list
    or tuple of strings."""
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must be given, got None")
    if isinstance(value, str) and value in meta.get("words", ()):
        return value
    rng = range_text(meta)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int) or not _in_range(value, meta):
            raise ConfigError(f"{name} must be an integer{' ' + rng if rng else ''}, got {value!r}")
        return value
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not _in_range(value, meta):
            what = f"finite and {rng}" if rng else "a finite number"
            raise ConfigError(f"{name} must be {what}, got {value!r}")
        return float(value)
    if base is str:
        choices = meta.get("choices")
        if not isinstance(value, str) or (choices and value not in choices):
            what = f"one of {', '.join(choices)}" if choices else "a string"
            raise ConfigError(f"{name} must be {what}, got {value!r}")
        return value
    if base == tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings, got {value!r}")
        return tuple(value)
    if base == tuple[float, ...]:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list of numbers, got {value!r}")
        return tuple(check_value(name, v, float, False, meta) for v in value)
    if base == tuple[float, float]:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ConfigError(f"{name} must be two numbers, got {value!r}")
        return tuple(check_value(name, v, float, False, meta) for v in value)
    raise TypeError(f"option {name}: unsupported type {base!r}")  # a declaration bug


def validate(config: Any) -> None:
    """Check (and normalise: int → float for float fields) every field of ``config``."""
    types = field_types(type(config))
    for f in dataclasses.fields(config):
        base, optional = types[f.name]
        value = check_value(f.name, getattr(config, f.name), base, optional, f.metadata)
        object.__setattr__(config, f.name, value)


def config_from(cls: type, values: Mapping[str, Any], where: str, base: Any = None) -> Any:
    """``cls`` (a config dataclass) from ``values`` over ``base`` (default: ``cls()``); a key
    that names no field is one line naming it and ``where`` (e.g. ``"train()"``)."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(f"{where} has no option {key!r} (options: {', '.join(names)})")
    return dataclasses.replace(base if base is not None else cls(), **values)


@dataclass(frozen=True)
class TrainConfig:
    """The options of :func:`physgen.train`, with the defaults of ``physgen train``.

    Add an option here (one line) and it exists as a ``physgen train`` flag, a
    ``PHYSGEN_TRAIN_*`` variable, a ``[train]`` config key and a ``train(...)`` keyword; the
    loop reads it from the config. Fields with ``resume="free"`` may change on resume; the
    others must match the checkpoint.
    """

    steps: int = option(
        3000, "Optimizer steps in total (a resumed run may raise it).", min=1, resume="free"
    )
    batch_size: int = option(256, "Examples per step.", min=1)
    lr: float = option(2e-3, "Adam learning rate.", min=0, min_open=True)
    ema_decay: float = option(
        0.999, "EMA decay of the weights used for sampling.", min=0, max=1, max_open=True
    )
    grad_clip: float = option(1.0, "Clip the gradient norm to this value (0: off).", min=0)
    seed: int = option(
        0, "Seed for every random draw (data, initialisation, noise).", min=0, max=2**31 - 1
    )
    checkpoint_every: int | None = option(
        1000,
        "Write a checkpoint every this many steps (None: only at the end).",
        min=1,
        resume="free",
    )
    log_every: int = option(
        50,
        "Copy the losses to the host (and check them) every this many steps.",
        min=1,
        resume="free",
    )
    label_dropout: float = option(
        0.0,
        "Probability of training a label as 'none' (classifier-free guidance; implies "
        "--class-cond).",
        min=0,
        max=1,
        max_open=True,
    )
    shards: int | None = option(
        None,
        "Split each batch into this many shards with their own noise (gradient accumulation)"
        "  [default: the torchrun world size]",
        min=1,
    )
    precision: str = option(
        "fp32",
        "bf16: autocast the loss (weights, EMA and optimizer state stay fp32).",
        choices=("fp32", "bf16"),
    )
    compile: bool = option(False, "torch.compile the network.")
    channels_last: bool = option(False, "channels-last memory format (images).")
    workers: int = option(0, "DataLoader worker processes reading streamed data.", min=0,
                          resume="free")  # fmt: skip
    # EMA profiles and post-hoc EMA (physgen.training.posthoc; Karras et al. 2024, EDM2 §3.1)
    ema_lengths: tuple[float, ...] = option(
        (), "Also track a power-function EMA of this relative length σ_rel (EDM2), repeatable: "
        "--ema-length 0.05 --ema-length 0.1; `physgen sample --ema-length` samples with one.",
        flag="--ema-length", min=0, min_open=True, max=math.sqrt(1 / 12), max_open=True,
    )  # fmt: skip
    ema_snapshot_every: int | None = option(
        None, "Snapshot the --ema-length profiles every this many steps (and at the last step) "
        "beside the checkpoint: post-hoc EMA then rebuilds any σ_rel after training.", min=1,
        resume="free",
    )  # fmt: skip
    # Learning-rate schedule (physgen.training.schedule): warm-up, then decay
    lr_schedule: str = option(
        "constant", "Learning-rate decay after the warm-up: constant, cosine (to 0 at "
        "--lr-tref), inv_sqrt (lr/sqrt(max(t/t_ref, 1)), EDM2 eq. 16).",
        choices=("constant", "cosine", "inv_sqrt"),
    )  # fmt: skip
    lr_warmup: int = option(
        0, "Linear learning-rate warm-up from 0 over this many steps (or images, --lr-unit).",
        min=0,
    )  # fmt: skip
    lr_tref: int | None = option(
        None, "Decay time t_ref in --lr-unit: where inv_sqrt starts decaying, where cosine "
        "reaches 0  [default: --steps (steps × batch size in images)]", min=1,
    )  # fmt: skip
    lr_unit: str = option(
        "steps", "Unit of --lr-warmup and --lr-tref: steps, or images (steps × batch size).",
        choices=("steps", "images"),
    )  # fmt: skip
    # Logging (physgen.training.scalars)
    tensorboard: str | None = option(
        None, "Also log loss, grad norm, lr and steps/s to TensorBoard event files in this "
        "folder (needs the tensorboard package: pip install 'physgen[tensorboard]').",
        resume="free",
    )  # fmt: skip

    def __post_init__(self) -> None:
        validate(self)
