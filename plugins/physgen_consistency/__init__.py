"""physgen_consistency plugin (in progress)."""
