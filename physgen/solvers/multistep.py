"""Multistep solvers on the ``denoiser`` view: one denoiser evaluation per step.

They integrate the PF-ODE ``dx/dσ = (x − D(x; σ)) / σ`` (EDM frame, docs/math.md §1). The
exponential integrators (DPM-Solver++(2M), (3M), UniPC) work in the half-log-SNR
``λ = −ln σ``, where the linear part is solved exactly and only the denoiser is approximated,
by a polynomial through the denoised values of past steps; iPNDM is Adams–Bashforth on the
σ-frame derivative ``d = (x − D)/σ``. ``grid`` is the float64 σ-grid, decreasing, possibly
ending in 0; a step into σ = 0 returns the denoised value (the limit h → ∞ of every
exponential step, and the Euler step of EDM Algorithm 1, line 8), so NFE = number of
intervals. Multistep solvers start at first order and raise the order as history accrues;
``lower_order_final`` lowers it again on the last steps of short grids (fewer than
:data:`LOWER_ORDER_FINAL_BELOW` intervals), as the reference implementations do, because the
largest λ-steps of an EDM grid are the last ones.

The third-order DPM-Solver++ update needs ``D_2 ≈ h² d²D/dλ²``; the multistep code of
k-diffusion (``sample_dpmpp_3m_sde``) and diffusers (``multistep_dpm_solver_third_order_update``)
uses ``(D1_0 − D1_1)/(r_0 + r_1) ≈ h² D''/2``, which leaves a local error ``h³ D''/12`` and a
second-order method (measured in ``tests/test_multistep.py``). :func:`dpmpp_3m` uses twice that,
the third-order value. The lower-order start adds a term ``O(h_0² dD/dλ)`` from the first steps,
small when ``D`` is flat at σ_max (σ_max ≫ the data scale, as on EDM grids), so the declared
orders are those of the multistep formulas.

``afs`` (analytical first step, every solver here) skips the denoiser call at ``grid[0]``:
for data of mean μ and covariance Σ, ``D(x; σ) = μ + Σ (Σ + σ² I)^(−1) (x − μ)``, which is
``μ + O(σ_data²/σ_max²) x`` at σ_max ≫ σ_data; with the data assumed centred (μ = 0, true of
normalised data, and the only value known without the network) the first step uses ``D = 0``,
i.e. ``dx/dσ = x/σ`` (Zhou et al. 2024, §4.1; Dockhorn, Vahdat & Kreis, "GENIE", NeurIPS
2022). The error it makes is ``(1 − σ_1/σ_0) μ`` in ``x_1``, contracted by later steps by
about ``σ_data/σ_1``. The value stands in for ``D_0`` in the history, and NFE = intervals − 1.

References: Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models" (2022), data-prediction form with α_t = 1, σ_t = σ, and its
reference code for the third-order multistep update; Zhao, Bai, Rao, Zhou & Lu, "UniPC: A
Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models" (NeurIPS 2023);
Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator" (DEIS, ICLR
2023), §4 (iPNDM); Zhou, Chen, Zhang, Wang & Zhu, "Fast ODE-based Sampling for Diffusion
Models in Around 5 Steps" (CVPR 2024), iPNDM on the σ-frame PF-ODE.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from physgen.errors import ConfigError
from physgen.solvers import Sampler
from physgen.solvers.exponential import exponential_step

__all__ = [
    "LOWER_ORDER_FINAL_BELOW",
    "SAMPLERS",
    "adams_bashforth_weights",
    "dpmpp_2m",
    "dpmpp_3m",
    "ipndm",
    "unipc",
]

Denoiser = Callable[[Tensor, Tensor], Tensor]
OnStep = Callable[[int, Tensor], None]


def _check_sigmas(grid: Tensor, afs: bool = False) -> None:
    if grid.ndim != 1 or grid.shape[0] < 2 or not bool((grid[:-1] > 0).all()):
        raise ConfigError("a denoiser grid needs ≥ 2 decreasing σ > 0 (the last may be 0)")
    if afs and grid.shape[0] < 3:
        raise ConfigError("afs (analytical first step) needs a grid of ≥ 2 intervals")


#: grids with fewer intervals than this take lower orders on their last steps when
#: ``lower_order_final`` is set (the threshold of diffusers' multistep schedulers)
LOWER_ORDER_FINAL_BELOW = 15


def _step_order(order: int, i: int, steps: int, lower_order_final: bool) -> int:
    """The order of step ``i`` of ``steps``: ``min(order, i + 1)`` while history accrues and,
    with ``lower_order_final`` on a short grid, at most ``steps − i`` (2 on the step before the
    last, 1 on the last; DPM-Solver++ and UniPC reference code)."""
    k = min(order, i + 1)
    if lower_order_final and steps < LOWER_ORDER_FINAL_BELOW:
        k = min(k, steps - i)
    return k


#: ``(x, sigmas, history, sigma_next) -> x'`` from ``sigmas[-1]`` to ``sigma_next > 0`` through
#: the last k points and history values (oldest first), k the step's order; a corrector also
#: takes the denoised value at the predicted ``x'``
Update = Callable[[Tensor, list[Tensor], list[Tensor], Tensor], Tensor]
Correct = Callable[[Tensor, list[Tensor], list[Tensor], Tensor, Tensor], Tensor]


def _multistep(
    update: Update,
    order: int,
    f: Denoiser,
    x: Tensor,
    grid: Tensor,
    on_step: OnStep | None,
    afs: bool,
    lower_order_final: bool = False,
    correct: Correct | None = None,
    slope: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """The loop every solver here shares, one denoiser call per grid point but the last.

    At each ``σ > 0`` of ``grid`` it takes ``D(x; σ)`` (``D = 0`` at ``grid[0]`` with ``afs``,
    module docstring), keeps the last ``order`` points and history values (``D``, or
    ``slope(x, σ, D)``) and calls ``update`` at the order of :func:`_step_order`. A last step
    into σ = 0 returns the denoised value (h = ∞). With ``correct`` (UniPC) the next ``D`` is
    taken at the predicted point and the step is corrected through it, except on the last
    step, which has nothing left to evaluate.
    """
    _check_sigmas(grid, afs)
    steps = grid.shape[0] - 1
    sigmas: list[Tensor] = []
    history: list[Tensor] = []
    denoised: Tensor | None = None
    for i in range(steps):
        sigma, sigma_next = grid[i], grid[i + 1]
        if denoised is None:  # D ≈ 0 for centred data at σ_max ≫ σ_data (Zhou et al. 2024, §4.1)
            denoised = torch.zeros_like(x) if afs and i == 0 else f(x, sigma)
        if sigma_next == 0:  # h = ∞: the step returns the denoised value
            x = denoised
        else:
            value = denoised if slope is None else slope(x, sigma, denoised)
            sigmas, history = [*sigmas, sigma][-order:], [*history, value][-order:]
            k = _step_order(order, i, steps, lower_order_final)
            x_next = update(x, sigmas[-k:], history[-k:], sigma_next)
            denoised = None
            if correct is not None and i < steps - 1:
                denoised = f(x_next, sigma_next)
                x_next = correct(x, sigmas[-k:], history[-k:], sigma_next, denoised)
            x = x_next
        if on_step is not None:
            on_step(i, x)
    return x


def _weighted_sum(weights: Iterable[Tensor], values: Iterable[Tensor], start: Tensor) -> Tensor:
    """``start + Σ_j w_j v_j``."""
    return sum((w * v for w, v in zip(weights, values, strict=True)), start)


def _dpmpp_2m_update(
    x: Tensor, sigmas: list[Tensor], denoised: list[Tensor], sigma_next: Tensor
) -> Tensor:
    sigma, d0 = sigmas[-1], denoised[-1]
    if len(denoised) == 1:
        return exponential_step(x, sigma, sigma_next, d0)
    h, h_prev = torch.log(sigma / sigma_next), torch.log(sigmas[-2] / sigma)
    half_inv_r = h / (2 * h_prev)  # 1 / (2 r_i), r_i = h_{i−1} / h_i
    # D̃_i = (1 + 1/(2r_i)) D_i − 1/(2r_i) D_{i−1} (Lu et al. 2022, Algorithm 2)
    return exponential_step(x, sigma, sigma_next, (1 + half_inv_r) * d0 - half_inv_r * denoised[-2])


def dpmpp_2m(
    f: Denoiser,
    x: Tensor,
    grid: Tensor,
    *,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
    afs: bool = False,  # analytical first step: D = 0 at σ_max, one NFE fewer
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), one denoiser call per step.

    With ``λ = −ln σ`` and ``h_i = λ_{i+1} − λ_i``: ``x_{i+1} = (σ_{i+1}/σ_i) x_i −
    (e^(−h_i) − 1) D̃_i``, ``D̃_i = (1 + 1/(2r_i)) D_i − 1/(2r_i) D_{i−1}``, ``r_i = h_{i−1}/h_i``
    (docs/math.md §5). The first step is first order (``D̃_0 = D_0``), and so is a last step into
    σ = 0, which returns the denoised value (as k-diffusion's ``sample_dpmpp_2m``).
    ``f`` is ``D(x; σ)``, ``x`` ``[B, *event]`` at ``grid[0]``; ``afs``: the first step uses
    ``D = 0`` (module docstring).
    """
    return _multistep(_dpmpp_2m_update, 2, f, x, grid, on_step, afs)


def _dpmpp_update(
    x: Tensor, sigmas: list[Tensor], denoised: list[Tensor], sigma_next: Tensor
) -> Tensor:
    """One DPM-Solver++ multistep update of order ``len(denoised)`` (1–3) from ``sigmas[-1]``
    to ``sigma_next > 0`` through the last steps' ``D``, oldest first, in ``λ = −ln σ``."""
    sigma, d0 = sigmas[-1], denoised[-1]
    if len(denoised) == 1:
        return exponential_step(x, sigma, sigma_next, d0)
    lambdas = [-torch.log(s) for s in sigmas]
    h = torch.log(sigma / sigma_next)
    r0 = (lambdas[-1] - lambdas[-2]) / h
    d1_0 = (d0 - denoised[-2]) / r0
    if len(denoised) == 2:  # 2M: D̃ = D_0 + (D_0 − D_{−1}) / (2 r_0) (Lu et al. 2022, Alg. 2)
        return exponential_step(x, sigma, sigma_next, d0 + d1_0 / 2)
    r1 = (lambdas[-2] - lambdas[-3]) / h
    d1_1 = (denoised[-2] - denoised[-3]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)  # ≈ h dD/dλ, to second order
    d2 = 2 * (d1_0 - d1_1) / (r0 + r1)  # ≈ h² d²D/dλ² (the module docstring: the factor 2)
    phi_1 = torch.expm1(-h)  # h-scaled φ-functions of the data-prediction integrator
    phi_2 = phi_1 / h + 1
    phi_3 = phi_2 / h - 0.5
    # DPM-Solver++(3M): x' = (σ'/σ) x − φ_1 D_0 + φ_2 D_1 − φ_3 D_2, the exact integral of the
    # quadratic through the last three D in λ (Lu et al. 2022, §4, α = 1)
    return exponential_step(x, sigma, sigma_next, d0) + phi_2 * d1 - phi_3 * d2


def dpmpp_3m(
    f: Denoiser,
    x: Tensor,
    grid: Tensor,
    *,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
    lower_order_final: bool = True,  # orders 2, 1 on the last steps of < 15-step grids
    afs: bool = False,  # analytical first step: D = 0 at σ_max, one NFE fewer
) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022), deterministic, one denoiser call per step.

    Orders 1, 2, 3 on the first three steps (the 2nd-order step is :func:`dpmpp_2m`'s), then
    third order in ``λ = −ln σ`` through the last three denoised values; a last step into
    σ = 0 returns the denoised value. ``f`` is ``D(x; σ)``, ``x`` ``[B, *event]`` at
    ``grid[0]``; ``afs``: the first step uses ``D = 0`` (module docstring).
    """
    return _multistep(_dpmpp_update, 3, f, x, grid, on_step, afs, lower_order_final)


def _unipc_rhos(lambdas: list[Tensor], lambda_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """UniPC-bh2 coefficients for a step from ``lambdas[-1]`` to ``lambda_next`` with
    ``p = len(lambdas)`` history points (oldest first): ``r_k``, the predictor's ``ρ^p`` (UniP,
    Zhao et al. 2023, Alg. 2) and the corrector's ``ρ^c`` (UniC, Alg. 1), solved from
    ``R ρ = g`` with ``R_ik = r_k^(i−1)``, ``g_i = h φ_(i+1)(h) i! / B(h)``, ``B(h) = e^h − 1``
    (written here with h → −h, data prediction)."""
    p = len(lambdas)
    h = lambda_next - lambdas[-1]
    hh = -h
    rks = torch.stack(
        [*((lam - lambdas[-1]) / h for lam in reversed(lambdas[:-1])), torch.ones_like(h)]
    )
    h_phi_k = torch.expm1(hh) / hh - 1  # h φ_2(h) and onwards, by φ_(k+1) = (φ_k − 1/k!)/h
    b_h = torch.expm1(hh)  # B(h) of the bh2 variant
    g, factorial = [], 1
    for i in range(1, p + 1):
        g.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    rhs = torch.stack(g)
    R = torch.stack([rks**i for i in range(p)])
    half = rhs.new_full((1,), 0.5)  # the reference code's closed forms for p = 1, 2
    rhos_p = half if p == 2 else torch.linalg.solve(R[:-1, :-1], rhs[:-1]) if p > 2 else rhs[:0]
    rhos_c = half if p == 1 else torch.linalg.solve(R, rhs)
    return rks, rhos_p, rhos_c


def _unipc_terms(
    x: Tensor, sigmas: list[Tensor], denoised: list[Tensor], sigma_next: Tensor
) -> tuple[Tensor, Tensor, list[Tensor], Tensor, Tensor]:
    """What UniP and UniC of one step share: the first-order step, ``B(h) = e^(−h) − 1``, the
    scaled differences ``D_k / r_k`` and the coefficients ``ρ^p``, ``ρ^c``."""
    sigma, d0 = sigmas[-1], denoised[-1]
    rks, rhos_p, rhos_c = _unipc_rhos([-torch.log(s) for s in sigmas], -torch.log(sigma_next))
    diffs = [(denoised[-2 - k] - d0) / rks[k] for k in range(len(denoised) - 1)]  # D_k / r_k
    b_h = torch.expm1(torch.log(sigma_next / sigma))
    return exponential_step(x, sigma, sigma_next, d0), b_h, diffs, rhos_p, rhos_c


def _unip_update(
    x: Tensor, sigmas: list[Tensor], denoised: list[Tensor], sigma_next: Tensor
) -> Tensor:
    base, b_h, diffs, rhos_p, _ = _unipc_terms(x, sigmas, denoised, sigma_next)
    return base - b_h * _weighted_sum(rhos_p, diffs, torch.zeros_like(x))  # UniP (Alg. 2)


def _unic_correct(
    x: Tensor, sigmas: list[Tensor], denoised: list[Tensor], sigma_next: Tensor, d_next: Tensor
) -> Tensor:
    base, b_h, diffs, _, rhos_c = _unipc_terms(x, sigmas, denoised, sigma_next)
    correction = _weighted_sum(rhos_c[:-1], diffs, rhos_c[-1] * (d_next - denoised[-1]))
    return base - b_h * correction  # UniC (Zhao et al. 2023, eq. 9, Alg. 1)


def unipc(
    f: Denoiser,
    x: Tensor,
    grid: Tensor,
    *,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
    lower_order_final: bool = True,  # orders 2, 1 on the last steps of < 15-step grids
    afs: bool = False,  # analytical first step: D = 0 at σ_max, one NFE fewer
) -> Tensor:
    """UniPC-3 with B(h) = e^h − 1 (Zhao et al. 2023, "bh2"), data prediction, one denoiser
    call per step.

    Each step predicts ``x'`` with UniP-p (p = 1, 2, 3 as history accrues), evaluates
    ``D(x'; σ')`` — the evaluation the next step needs anyway — and corrects ``x'`` with UniC
    through it (Alg. 1), which raises the order by one at no extra NFE; that evaluation (at
    the predicted point) is the history value of ``σ'``. The last step has no corrector; one
    into σ = 0 returns the last denoised value. ``x`` ``[B, *event]`` at ``grid[0]``;
    ``afs``: ``D = 0`` at ``grid[0]`` (module docstring).
    """
    return _multistep(_unip_update, 3, f, x, grid, on_step, afs, lower_order_final, _unic_correct)


def adams_bashforth_weights(times: Tensor, t_next: Tensor) -> Tensor:
    """Variable-step Adams–Bashforth weights ``w`` with ``x' = x + (t' − t) Σ_j w_j d_j``:
    the integral over ``[t, t']`` of the polynomial through ``(times_j, d_j)`` (oldest first,
    ``t = times[-1]``), from the moment equations ``Σ_j w_j u_j^m = 1/(m + 1)``,
    ``u_j = (times_j − t)/(t' − t)`` (Hairer, Nørsett & Wanner, "Solving ODEs I", §III.5).
    On a uniform grid they are the classic 1; 3/2, −1/2; 23/12, −16/12, 5/12; … float64."""
    u = (times - times[-1]) / (t_next - times[-1])
    V = torch.stack([u**m for m in range(times.shape[0])])
    moments = 1 / torch.arange(1, times.shape[0] + 1, dtype=times.dtype, device=times.device)
    return torch.linalg.solve(V, moments)


def _sigma_slope(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    return (x - denoised) / sigma  # dx/dσ = (x − D(x; σ)) / σ (EDM eq. 3)


def _ipndm_update(
    x: Tensor, sigmas: list[Tensor], slopes: list[Tensor], sigma_next: Tensor
) -> Tensor:
    w = adams_bashforth_weights(torch.stack(sigmas), sigma_next)
    return x + (sigma_next - sigmas[-1]) * _weighted_sum(w, slopes, torch.zeros_like(x))  # AB-k


def ipndm(
    f: Denoiser,
    x: Tensor,
    grid: Tensor,
    *,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
    lower_order_final: bool = True,  # orders 2, 1 on the last steps of < 15-step grids
    afs: bool = False,  # analytical first step: D = 0 at σ_max, one NFE fewer
) -> Tensor:
    """iPNDM (Zhang & Chen 2023, §4; Zhou et al. 2024): fourth-order Adams–Bashforth on the
    σ-frame PF-ODE ``dx/dσ = d = (x − D(x; σ))/σ`` (EDM eq. 3), warmed up at orders 1, 2, 3
    from the steps already taken (no Runge–Kutta start), one denoiser call per step. The
    weights are the variable-step ones (:func:`adams_bashforth_weights`), so the order holds on
    any grid (iPNDM-v of Zhou et al. 2024). A last step into σ = 0 returns the denoised value
    (its Euler step). ``x`` ``[B, *event]`` at ``grid[0]``; ``afs``: the first slope is
    ``x/σ`` (``D = 0``, module docstring).
    """
    return _multistep(
        _ipndm_update, 4, f, x, grid, on_step, afs, lower_order_final, slope=_sigma_slope
    )


def _one_per_interval(grid: Tensor, *, afs: bool = False, **_: object) -> int:
    """One denoiser call per interval, less the analytical first step's."""
    return grid.shape[0] - 1 - int(afs)


def _record(name: str, fn: Callable[..., Tensor], order: int, description: str) -> Sampler:
    """The record of a solver here: denoiser view, one NFE per interval; options ``afs``
    (analytical first step: D = 0 at σ_max, one NFE fewer) and, for the solvers above second
    order, ``lower_order_final`` (orders 2, 1 on the last steps of < 15-step grids)."""
    return Sampler(
        name=name, fn=fn, view="denoiser", description=description, order=order,
        nfe=_one_per_interval,
    )  # fmt: skip


#: the multistep samplers, registered by :mod:`physgen.registry.builtin`
SAMPLERS: list[Sampler] = [
    _record("dpmpp_2m", dpmpp_2m, 2,
            "DPM-Solver++(2M), 2nd-order multistep in λ = −ln σ (Lu et al. 2022)"),
    _record("dpmpp_3m", dpmpp_3m, 3,
            "DPM-Solver++(3M), 3rd-order multistep in λ = −ln σ (Lu et al. 2022)"),
    _record("unipc", unipc, 4,
            "UniPC-3 bh2 predictor + UniC corrector, data prediction (Zhao et al. 2023)"),
    _record("ipndm", ipndm, 4,
            "iPNDM, 4th-order Adams–Bashforth on dx/dσ (Zhang & Chen 2023)"),
]  # fmt: skip
