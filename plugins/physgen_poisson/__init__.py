"""physgen_poisson plugin (in progress)."""
