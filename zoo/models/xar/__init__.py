"""Family xar (being built)."""
