"""Family codet5 (being built)."""
