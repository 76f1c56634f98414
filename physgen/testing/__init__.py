"""Exact reference fields for tests and benchmarks: Gaussian-mixture and finite-dataset
denoisers with closed forms (:mod:`physgen.testing.oracles`). Process-specific oracles live
with their process plugins."""
