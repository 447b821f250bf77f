"""Command-line entry points (thin wrappers around Hydra)."""
