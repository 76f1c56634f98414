"""physgen_flow plugin (in progress)."""
