"""``aifi pseudonymize SRC DST``: batch pseudonymization for research exports."""

from __future__ import annotations


def pseudonymize() -> None:
    """Pseudonymize a folder of DICOM files (not written yet)."""
    raise SystemExit("aifi pseudonymize is not available yet")
