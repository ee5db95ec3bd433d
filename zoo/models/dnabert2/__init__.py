"""Family dnabert2 (being built)."""
