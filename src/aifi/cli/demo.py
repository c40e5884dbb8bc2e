"""``aifi demo``: hub, edge and a small PACS on loopback, with sample studies."""

from __future__ import annotations


def demo() -> None:
    """Run the demo (not written yet)."""
    raise SystemExit("aifi demo is not available yet")
