"""physgen's flow-matching processes and couplings, registered as an ordinary physgen plugin.

Processes: ``cfm`` (I-CFM, independent coupling), ``otcfm`` (minibatch exact OT coupling) and
``rectified`` (rectified flow on stored reflow pairs), each with ode and denoiser views (and a
score view where ``x_t / t`` is a Gaussian perturbation of the data); see
:mod:`physgen_flow.matching`. Couplings ``independent``, ``ot`` and ``sinkhorn`` are looked up
through the registry, so any process that pairs prior draws with data can use them
(:mod:`physgen_flow.couplings`). Reflow pairs and the straightness metric:
:mod:`physgen.sampling.reflow` (core: reflow works from any ODE process).
"""

from __future__ import annotations

from physgen.registry import CouplingEntry, ProcessEntry
from physgen.registry.hookspecs import hookimpl


@hookimpl
def physgen_processes() -> list[ProcessEntry]:
    from physgen_flow.matching import FlowMatching, OTFlowMatching, RectifiedFlow

    return [
        ProcessEntry("cfm", FlowMatching, "conditional flow matching, I-CFM (Lipman et al. 2023)"),
        ProcessEntry("otcfm", OTFlowMatching, "minibatch OT flow matching (Tong et al. 2024)"),
        ProcessEntry("rectified", RectifiedFlow, "rectified flow, reflow pairs (Liu et al. 2023)"),
    ]


@hookimpl
def physgen_couplings() -> list[CouplingEntry]:
    from physgen_flow.couplings import IndependentCoupling, OTCoupling, SinkhornCoupling

    return [
        CouplingEntry("independent", IndependentCoupling, "product coupling: pairs as drawn"),
        CouplingEntry("ot", OTCoupling, "minibatch exact OT, squared Euclidean cost (ot.emd)"),
        CouplingEntry("sinkhorn", SinkhornCoupling, "entropic OT plan, sampled (ot.sinkhorn)"),
    ]
