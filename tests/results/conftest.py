"""Fixtures for the result builders: phantom studies written as the hub stores them.

The images are aifi's procedural phantoms (:mod:`aifi.phantoms`, synthetic
patients only): a two-view forearm radiograph study (DX, views of different
sizes), a PA hand radiograph of a child (CR, MONOCHROME1) and an axial
contrast chest CT (8 slices). The builders get them as the hub passes them:
headers read without pixel data from the stored files (:func:`helpers.headers`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aifi.phantoms import bone_age_study, chest_ct_series, fracture_study, write_study


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
