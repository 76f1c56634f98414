"""The solver layer: plain functions over a field and a grid.

Every sampler has one signature::

    fn(f, x, grid, *, generator=None, on_step=None, **options) -> Tensor

``f`` is the function of the view the sampler needs (``ode``: the field ``dx/dt``;
``denoiser`` and ``score``: the denoiser ``D(x; σ)``; ``consistency``: ``f(x, σ)``), ``x`` the
prior draw at ``grid[0]``, ``grid`` the float64 times from prior to data (see
:mod:`physgen.core.process` for the conventions). ``on_step(i, x)`` is called after step ``i``.
Solvers know no process; they never count NFE themselves (the driver wraps ``f`` in a
:class:`~physgen.core.process.CountedFn`), and stochastic ones draw noise only from ``generator``.

A :class:`Sampler` record declares what a solver is, as data: the view it needs, its order,
whether it is stochastic, and how many evaluations it spends for a number of steps.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from physgen.errors import ConfigError

__all__ = ["Sampler", "signature_options"]

#: keyword arguments of the solver signature that are not options
_PLUMBING = ("generator", "on_step")


def signature_options(fn: Callable[..., Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options of a sampler function, read from its signature once: ``(defaults,
    types)`` of its keyword-only parameters other than ``generator`` and ``on_step``, in
    signature order. ``types`` holds the annotations (``float``, ``float | None``, …)."""
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # an annotation only a type checker can resolve
        hints = {}
    params = inspect.signature(fn).parameters.values()
    names = [
        p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _PLUMBING
    ]
    defaults = {p.name: p.default for p in params if p.name in names}
    missing = [n for n, d in defaults.items() if d is inspect.Parameter.empty]
    if missing:
        raise TypeError(f"sampler option {missing[0]!r} of {fn.__name__} needs a default")
    return defaults, {n: hints.get(n, Any) for n in names}


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: the solver function and what it is. Its options (names,
    defaults, types) are the keyword-only parameters of ``fn``, read by
    :func:`signature_options`: a default is written once, in the function."""

    name: str
    fn: Callable[..., Tensor]
    #: the view it needs: "ode", "denoiser", "score" or "consistency"
    view: str
    #: one-line description shown by ``physgen plugins``
    description: str
    #: declared global order of convergence in the step size (None: not a convergent solver)
    order: float | None = None
    #: whether it injects noise (then it needs a generator)
    stochastic: bool = False
    #: ``nfe(grid, **options)``: network evaluations it spends on a grid with the given
    #: options (None: decided at run time, e.g. adaptive)
    nfe: Callable[..., int] | None = None
    #: whether it chooses its own steps (adaptive step size): the grid gives only its ends,
    #: so a step count means nothing and only the NFE is reported
    adaptive: bool = False
    #: default keyword options of ``fn`` (plain values), from its signature
    options: dict[str, Any] = field(init=False)
    #: the declared type of each option, from its signature
    option_types: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        defaults, types = signature_options(self.fn)
        object.__setattr__(self, "options", defaults)
        object.__setattr__(self, "option_types", types)

    def parse_options(self, values: dict[str, Any] | None) -> dict[str, Any]:
        """The full options: the defaults updated by ``values``, whose strings (``--opt
        rtol=1e-4``) are converted to the declared type. An unknown name or a bad value is a
        one-line :class:`ConfigError` naming the sampler."""
        from physgen.core.process import convert_value

        owner = f"sampler {self.name!r}"
        out = dict(self.options)
        for key, raw in (values or {}).items():
            if key not in self.options:
                known = ", ".join(self.options) or "none"
                raise ConfigError(f"{owner} has no option {key!r} (options: {known})")
            default = self.options[key]
            if isinstance(raw, str) and default is None:  # typed by its annotation alone
                if raw.strip().lower() == "none":
                    out[key] = None
                    continue
                kinds = [t for t in typing.get_args(self.option_types[key]) if t is not type(None)]
                default = kinds[0]() if len(kinds) == 1 and kinds[0] in (bool, int, float) else None
            out[key] = convert_value(raw, default, name=key, owner=owner)
        return out
