"""``physgen bench``: train every process on the same data, backbone and budget, sample each
at a ladder of NFE budgets with each sampler it can serve, score the samples against fresh
held-out data, and keep everything in one resumable HDF5 file with a table and plots.

* :mod:`physgen.bench.suite` — the suite (TOML or built in) and its validation;
* :mod:`physgen.bench.runner` — training, NFE budget → steps, sampling, metrics;
* :mod:`physgen.bench.store` — the HDF5 layout (documented there) and atomic appends;
* :mod:`physgen.bench.report` — the markdown table and the PNG plots.

Python::

    from physgen.bench import load_suite, parse_suite, report, run_bench

    suite = parse_suite({"processes": ["edm", "cfm"], "nfe": [2, 8, 32]})
    run = run_bench(suite, "runs/bench.h5")
    print(report("runs/bench.h5").table)
"""

from __future__ import annotations

from physgen.bench.report import Report, report
from physgen.bench.runner import BenchRun, run_bench, steps_for_budget
from physgen.bench.store import BenchFile, read_bench
from physgen.bench.suite import ProcessSpec, Suite, load_suite, parse_suite

__all__ = [
    "BenchFile",
    "BenchRun",
    "ProcessSpec",
    "Report",
    "Suite",
    "load_suite",
    "parse_suite",
    "read_bench",
    "report",
    "run_bench",
    "steps_for_budget",
]
