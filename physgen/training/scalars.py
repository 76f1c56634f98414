"""Training scalars for TensorBoard: loss, gradient norm, learning rate and steps/s.

The run file (``train.h5``) always gets these curves (:class:`physgen.training.TrainResult`);
TensorBoard is optional (``pip install 'physgen[tensorboard]'``). Asking for it without the
package is a one-line :class:`~physgen.errors.ConfigError` before any work; not asking for it
imports nothing.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["TensorBoardLog", "check_tensorboard"]


def check_tensorboard() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line ConfigError when the
    tensorboard package is not installed."""
    from physgen.errors import ConfigError

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "tensorboard: the tensorboard package is not installed "
            "(pip install 'physgen[tensorboard]'), so nothing can be logged to it"
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """Scalars of a run, written to TensorBoard at each flush of the loop (every
    ``log_every`` steps): per-step ``train/loss``, ``train/grad_norm``, ``train/lr`` and
    ``train/steps_per_second`` at the flush's last step."""

    def __init__(self, logdir: str | os.PathLike[str]):
        self.writer = check_tensorboard()(log_dir=str(logdir))

    def add(
        self, first: int, losses: Any, grad_norms: Any, lrs: Any, steps_per_second: float,
    ) -> None:  # fmt: skip
        """Steps ``first, first + 1, ...``: one value of each curve (arrays ``[k]``) per step."""
        for i, (loss, norm, lr) in enumerate(zip(losses, grad_norms, lrs, strict=True)):
            self.writer.add_scalar("train/loss", float(loss), first + i)
            self.writer.add_scalar("train/grad_norm", float(norm), first + i)
            self.writer.add_scalar("train/lr", float(lr), first + i)
        last = first + len(losses) - 1
        self.writer.add_scalar("train/steps_per_second", float(steps_per_second), last)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
