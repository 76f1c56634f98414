"""Negative log-likelihood and bits per dimension of data under a model's PF-ODE.

Not a set metric — it needs the model — so it is not in :data:`physgen.metrics.METRICS`; call
:func:`nll` with ``process.view("ode", net)`` and held-out data. The density comes from
:func:`physgen.sampling.likelihood.log_likelihood` (instantaneous change of variables,
Chen et al. 2018,
Theorem 1; docs/math.md §1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from physgen.core.process import ODEView
from physgen.core.rng import Generator
from physgen.errors import ConfigError
from physgen.sampling.likelihood import bits_per_dim, log_likelihood

__all__ = ["NLLScore", "nll"]


@dataclass(frozen=True)
class NLLScore:
    """Mean negative log-likelihood of a data set, in nats and in bits per dimension."""

    #: mean −log p per example, nats
    nll: float
    #: mean bits per dimension, ``offset`` included
    bpd: float
    #: standard error of ``nll`` over the examples (sample spread, not solver error)
    nll_stderr: float
    #: examples scored
    n: int
    #: field evaluations over all batches
    nfe: int

    def as_dict(self) -> dict[str, float]:
        """Scalars for a run file's ``/metrics``: ``nll``, ``bpd``, ``nll_stderr``, ``nll_nfe``."""
        return {
            "nll": self.nll,
            "bpd": self.bpd,
            "nll_stderr": self.nll_stderr,
            "nll_nfe": float(self.nfe),
        }


def nll(
    view: ODEView,
    data: Tensor,
    *,
    batch_size: int = 256,
    offset: float = 0.0,
    generator: Generator | None = None,
    progress: bool = False,
    **options: Any,
) -> NLLScore:
    """NLL and bits/dim of ``data`` ``[n, *event]`` under the PF-ODE ``view``, in batches of
    ``batch_size``. ``offset``: added to bits/dim (7 for 8-bit data in [−1, 1] with uniform
    dequantisation, docs/math.md §1). ``options`` go to
    :func:`~physgen.sampling.likelihood.log_likelihood`
    (``divergence``, ``method``, ``rtol``, ``atol``, ``steps_grid``, ``hutchinson_samples``);
    ``generator`` draws Hutchinson probes; ``progress``: a progress bar on stderr (examples
    done, batch by batch)."""
    if batch_size < 1:
        raise ConfigError(f"nll: batch_size must be ≥ 1, got {batch_size}")
    if len(data) < 2:
        raise ConfigError(f"nll needs at least 2 examples, got {len(data)}")
    logps, nfe = [], 0
    with tqdm(
        total=len(data), disable=not progress, unit="example", dynamic_ncols=True, desc="nll"
    ) as bar:
        for batch in data.split(batch_size):
            result = log_likelihood(view, batch, generator=generator, **options)
            logps.append(result.logp.double())
            nfe += result.nfe
            bar.update(len(batch))
    logp = torch.cat(logps)
    n_dims = data[0].numel()
    return NLLScore(
        nll=float(-logp.mean()),
        bpd=float(bits_per_dim(logp, n_dims, offset).mean()),
        nll_stderr=float(logp.std() / math.sqrt(len(logp))),
        n=len(logp),
        nfe=nfe,
    )
