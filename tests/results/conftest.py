"""Fixtures for the result builders: phantom studies written as the hub stores them.

The images are aifi's procedural phantoms (:mod:`aifi.phantoms`, synthetic
patients only): a two-view forearm radiograph study (DX, views of different
sizes), a PA hand radiograph of a child (CR, MONOCHROME1) and an axial
contrast chest CT (8 slices). The builders get them as the hub passes them:
headers read without pixel data from the stored files (:func:`helpers.headers`).

:func:`algorithm_runs` runs each shipped algorithm (demo weights) once per
session on phantom studies, for the tests that check what the hub makes of
real findings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from aifi.algorithms.base import Algorithm, Findings, Manifest
from aifi.phantoms import (
    as_algorithm_input,
    bone_age_study,
    chest_ct_series,
    fracture_study,
    write_study,
)


@pytest.fixture
def radiographs(tmp_path: Path) -> list[Path]:
    """AP and lateral forearm views (different sizes) of one study."""
    return write_study(fracture_study(fracture=True, seed=1), tmp_path / "radiographs")


@pytest.fixture
def hand(tmp_path: Path) -> list[Path]:
    """One PA left-hand radiograph of an 8-year-old girl, MONOCHROME1."""
    study = bone_age_study(age_months=96, sex="F", bone_age_months=120, seed=2)
    return write_study(study, tmp_path / "hand")


@pytest.fixture
def chest_ct(tmp_path: Path) -> list[Path]:
    """Eight axial slices of a contrast chest CT with an embolus."""
    return write_study(chest_ct_series(embolus=True, seed=3, slices=8), tmp_path / "ct")


@dataclass(frozen=True)
class Run:
    """One real run of a shipped algorithm on a phantom study, as the hub's worker makes it."""

    name: str
    manifest: Manifest
    findings: Findings
    paths: list[Path]


def _runs(folder: Path) -> dict[str, Run]:
    from aifi.algorithms.bone_age import BoneAge
    from aifi.algorithms.fracture import FractureDetection
    from aifi.algorithms.incidental_pe import IncidentalPE
    from aifi.algorithms.integrity_check import ALGORITHM as INTEGRITY_CHECK

    fracture, pe = FractureDetection(), IncidentalPE()
    cases: list[tuple[str, Algorithm, list[pydicom.FileDataset]]] = [
        (
            "fracture-positive",
            fracture,
            fracture_study(fracture=True, seed=21, modality="CR", photometric="MONOCHROME1"),
        ),
        ("fracture-negative", fracture, fracture_study(fracture=False, seed=22, modality="DX")),
        ("pe-positive", pe, chest_ct_series(embolus=True, seed=41)),
        ("pe-negative", pe, chest_ct_series(embolus=False, seed=42)),
        (
            "bone-age",
            BoneAge(),
            bone_age_study(age_months=96, sex="F", bone_age_months=120, seed=2),
        ),
        ("integrity-check", INTEGRITY_CHECK, fracture_study(fracture=False, seed=3)),
    ]
    runs = {}
    for name, algorithm, study in cases:
        paths = write_study(study, folder / name)
        findings = algorithm.run(as_algorithm_input(paths))
        runs[name] = Run(name, algorithm.manifest, findings, paths)
    return runs


@pytest.fixture(scope="session")
def algorithm_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Fracture (positive CR MONOCHROME1, negative DX), PE (positive, negative), bone age,
    integrity check: each shipped algorithm run once with its demo weights."""
    return _runs(tmp_path_factory.mktemp("runs"))
