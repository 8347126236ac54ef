"""The framework adapters, against the real frameworks (skipped where one is not installed)."""
