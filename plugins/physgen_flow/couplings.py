"""Couplings: how a batch of prior draws ``x0`` is paired with a batch of data ``x1``.

A coupling is a small object called as ``coupling(x0, x1, generator) -> (x0, x1)``. Every
coupling here keeps ``x1`` (and so its class labels) in place and returns the partner of each
``x1`` row as the new ``x0``: a permutation of the batch's prior draws for exact OT, a draw from
the plan's column for Sinkhorn. ``independent`` says whether the re-paired ``x0`` is still
independent of ``x1`` — what a process needs before it may call ``x_t / t`` a Gaussian
perturbation of the data (the ``score`` view of flow matching).

* ``independent`` — the product coupling of I-CFM (Tong et al. 2024; Lipman et al. 2023).
* ``ot`` — minibatch exact optimal transport on the squared Euclidean cost (Tong et al. 2024,
  OT-CFM, eq. 17; Pooladian et al. 2023): POT's network simplex ``ot.emd`` on uniform
  marginals, whose optimal vertex is a permutation matrix (Birkhoff–von Neumann).
* ``sinkhorn`` — entropic OT (Cuturi 2013) through ``ot.sinkhorn``; each ``x1`` row draws its
  partner from its column of the plan, with the caller's generator.

Costs are computed in float64 on the CPU (POT's solvers run there); the returned tensors keep
the device and dtype of the inputs. Randomness comes only from the ``generator`` argument.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import ot
import torch
from scipy.spatial.distance import cdist
from torch import Tensor

from physgen.errors import ConfigError, DataError
from physgen.sampling.reflow import Z_LAWS, load_pairs

__all__ = [
    "Coupling",
    "IndependentCoupling",
    "OTCoupling",
    "PairCoupling",
    "SinkhornCoupling",
    "squared_cost",
]


class Coupling(Protocol):
    """Re-pairs a batch: ``x0`` ``[B, *event]`` prior draws, ``x1`` ``[B, *event]`` data."""

    #: whether the returned ``x0`` is independent of ``x1`` (the product coupling)
    independent: bool

    def __call__(
        self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]: ...


def squared_cost(x0: Tensor, x1: Tensor) -> np.ndarray:
    """``C_ij = ||x0_i − x1_j||²`` as a float64 ``[B, B]`` array (from explicit differences,
    which stay exact where ``|a|² + |b|² − 2a·b`` would cancel)."""
    a = x0.detach().flatten(1).to("cpu", torch.float64).numpy()
    b = x1.detach().flatten(1).to("cpu", torch.float64).numpy()
    return cdist(a, b, "sqeuclidean")


def _check_batch(x0: Tensor, x1: Tensor) -> None:
    if x0.shape != x1.shape:
        shapes = f"{list(x0.shape)} and {list(x1.shape)}"
        raise ConfigError(f"a coupling needs x0 and x1 of one shape, got {shapes}")


class IndependentCoupling:
    """The product coupling: pairs stay as drawn (I-CFM)."""

    independent = True

    def __call__(
        self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        _check_batch(x0, x1)
        return x0, x1

    def __repr__(self) -> str:
        return "IndependentCoupling()"


class OTCoupling:
    """Minibatch exact OT (OT-CFM): ``x0`` permuted so that ``Σ_j ||x0_σ(j) − x1_j||²`` is
    minimal over all permutations σ. Deterministic; ties are broken by the solver."""

    independent = False

    def __init__(self, num_iter_max: int = 1_000_000):
        if num_iter_max < 1:
            raise ConfigError(f"ot coupling: num_iter_max must be ≥ 1, got {num_iter_max}")
        self.num_iter_max = num_iter_max  # network-simplex iteration cap of ot.emd

    def __call__(
        self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        _check_batch(x0, x1)
        n = x0.shape[0]
        uniform = np.full(n, 1.0 / n)
        plan = ot.emd(uniform, uniform, squared_cost(x0, x1), numItermax=self.num_iter_max)
        # The optimum of the assignment LP is a vertex: a permutation matrix scaled by 1/n.
        partner = torch.from_numpy(plan.argmax(axis=0)).to(x0.device)
        return x0.index_select(0, partner), x1

    def __repr__(self) -> str:
        return "OTCoupling()"


class SinkhornCoupling:
    """Entropic OT: the Sinkhorn plan ``π`` for ``C`` with ``ε = reg · mean(C)`` (so ``reg``
    does not depend on the data's scale); each ``x1_j`` draws its partner ``i`` with
    probability ``π_ij / Σ_i π_ij``. ``reg → 0`` tends to exact OT, ``reg → ∞`` to the
    independent coupling. POT's plain (not log-domain) iteration is used: ``reg`` below
    ~0.01 underflows ``exp(−C/ε)`` and does not converge — use the ``ot`` coupling there."""

    independent = False

    def __init__(self, reg: float = 0.05, num_iter_max: int = 1000, tol: float = 1e-6):
        if not reg > 0:
            raise ConfigError(f"sinkhorn coupling: reg must be > 0, got {reg}")
        if num_iter_max < 1:
            raise ConfigError(f"sinkhorn coupling: num_iter_max must be ≥ 1, got {num_iter_max}")
        self.reg = reg  # entropic regularisation ε relative to the batch's mean cost
        self.num_iter_max = num_iter_max  # Sinkhorn iterations at most
        self.tol = tol  # stop when the plan's marginals are this close to uniform

    def plan(self, x0: Tensor, x1: Tensor) -> np.ndarray:
        """The entropic plan ``π`` ``[B, B]`` (float64, marginals 1/B) for the batch."""
        _check_batch(x0, x1)
        n = x0.shape[0]
        cost = squared_cost(x0, x1)
        uniform = np.full(n, 1.0 / n)
        eps = self.reg * max(float(cost.mean()), np.finfo(np.float64).tiny)
        return ot.sinkhorn(
            uniform, uniform, cost, eps, numItermax=self.num_iter_max, stopThr=self.tol
        )

    def __call__(
        self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        plan = self.plan(x0, x1)
        device = generator.device if generator is not None else torch.device("cpu")
        columns = torch.from_numpy(np.ascontiguousarray(plan.T)).clamp_min(0).to(device)  # [j, i]
        partner = torch.multinomial(columns, 1, generator=generator).squeeze(1)
        return x0.index_select(0, partner.to(x0.device)), x1

    def __repr__(self) -> str:
        return f"SinkhornCoupling(reg={self.reg})"


class PairCoupling:
    """Stored pairs ``(z_k, x_k)`` (reflow): the partner of a data row is the noise stored with
    it. Rows are found by their exact bytes (a hash, checked), so the batch must hold rows of
    ``x`` as stored (float32), in any order and with repeats — what the trainer draws."""

    independent = False

    def __init__(self, z: Tensor, x: Tensor):
        if z.shape != x.shape or z.ndim < 2:
            shapes = f"{list(z.shape)} and {list(x.shape)}"
            raise ConfigError(f"pairs need z and x of one shape [n, ...], got {shapes}")
        self.z = z.detach().to("cpu", torch.float32)
        self.x = x.detach().to("cpu", torch.float32)
        self._index: dict[int, int] = {}
        for i, row in enumerate(self.x.flatten(1).numpy()):
            self._index.setdefault(hash(row.tobytes()), i)

    def __call__(
        self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        _check_batch(x0, x1)
        rows = x1.detach().to("cpu", torch.float32).flatten(1)
        found = [self._index.get(hash(row.tobytes()), -1) for row in rows.numpy()]
        idx = torch.tensor(found, dtype=torch.long)
        if (idx < 0).any() or not torch.equal(self.x.flatten(1)[idx.clamp(min=0)], rows):
            missing = int((idx < 0).sum())
            raise DataError(
                f"{missing or 'some'} of {len(found)} batch rows are not in the reflow pairs; "
                "train rectified on the data half of the same pair file"
            )
        return self.z.index_select(0, idx).to(device=x1.device, dtype=x1.dtype), x1

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def __repr__(self) -> str:
        return f"PairCoupling(n={len(self)})"


def load_pair_coupling(path: str | Path, *, source: str = "gaussian") -> PairCoupling:
    """A :class:`PairCoupling` over the reflow pairs in ``path``, checked against the
    student's ``source`` (its noise must be the law the student samples from)."""
    pairs, meta = load_pairs(path)
    law = meta.get("z_law", Z_LAWS[0])
    teacher = (meta.get("teacher_process") or {}).get("options", {}).get("source")
    if law == Z_LAWS[0] and source != "gaussian":
        raise ConfigError(f"{path}: the pairs' noise is N(0, I); use source=gaussian")
    if law == Z_LAWS[1] and (source == "gaussian" or teacher not in (None, source)):
        raise ConfigError(
            f"{path}: the pairs' noise is the teacher's prior draw, not N(0, I); "
            f"set source={teacher or 'the teacher source'}"
        )
    return PairCoupling(pairs.z, pairs.x)
