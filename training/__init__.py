"""Reproducible training of the demo models (not part of the installed package)."""
