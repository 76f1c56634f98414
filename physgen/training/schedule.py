"""The learning rate of every step, in closed form: a linear warm-up, then a decay.

``lr(t) = lr_ref · warm(t) · decay(t)``, where ``t`` counts what was trained *before* the step
(steps, or images = steps × batch size), as EDM2's ``learning_rate_schedule(cur_nimg)`` and
transformers' ``get_cosine_schedule_with_warmup(current_step)`` count it:

* warm-up over ``t_w``: ``warm(t) = min(t / t_w, 1)`` (1 when ``t_w = 0``);
* ``constant``: ``decay = 1``;
* ``cosine``: ``decay = ½ (1 + cos(π · clip((t − t_w) / (t_ref − t_w), 0, 1)))``, reaching 0
  at ``t_ref`` (Loshchilov & Hutter 2017, SGDR, eq. 5 with one cycle and η_min = 0);
* ``inv_sqrt``: ``decay = 1 / sqrt(max(t / t_ref, 1))`` (Karras et al. 2024, EDM2, eq. 16).

The rate is a function of the step alone, so a resumed run gets every step's rate exactly;
:func:`physgen.train` sets it on the optimizer before each step.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["lr_at"]


def lr_at(step: int, cfg: Any) -> float:
    """The learning rate of step ``step`` (0-based) under ``cfg`` (a
    :class:`~physgen.training.TrainConfig` whose ``lr_tref`` is set, as :func:`physgen.train`
    resolves it)."""
    scale = cfg.batch_size if cfg.lr_unit == "images" else 1
    t, warmup = step * scale, cfg.lr_warmup
    warm = min(t / warmup, 1.0) if warmup > 0 else 1.0
    if cfg.lr_schedule == "constant":
        return float(cfg.lr * warm)
    tref = cfg.lr_tref
    if tref is None:
        raise ValueError("lr_at needs cfg.lr_tref (train() sets it from steps)")
    if cfg.lr_schedule == "cosine":
        span = max(tref - warmup, 1)
        progress = min(max((t - warmup) / span, 0.0), 1.0)
        return float(cfg.lr * warm * 0.5 * (1.0 + math.cos(math.pi * progress)))
    if cfg.lr_schedule == "inv_sqrt":
        return float(cfg.lr * warm / math.sqrt(max(t / tref, 1.0)))
    raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}")
