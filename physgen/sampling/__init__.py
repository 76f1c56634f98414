"""Sampling: the driver that runs a registered sampler over a process's view and counts NFE
(:mod:`physgen.sampling.driver`), one sampler on given start points, field and grid
(:mod:`physgen.sampling.solve`), guidance (:mod:`physgen.sampling.guidance`), exact
likelihood (:mod:`physgen.sampling.likelihood`) and reflow pairs with straightness
(:mod:`physgen.sampling.reflow`)."""

from physgen.sampling.driver import (
    SampleSet,
    compatible_samplers,
    describe_views,
    resolve_sampler,
    sample,
)

__all__ = ["SampleSet", "compatible_samplers", "describe_views", "resolve_sampler", "sample"]
