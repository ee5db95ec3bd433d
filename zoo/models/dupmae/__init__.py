"""Family dupmae (being built)."""
