"""The radiograph phantoms are valid CR/DX instances that show what they claim to show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from aifi.algorithms.preprocess import pixel_spacing_mm, radiograph_frames
from aifi.phantoms import (
    bone_age_study,
    fracture_study,
    hand_radiograph,
    long_bone_radiograph,
    write_study,
)

from .dicom_check import dciodvfy_errors


@pytest.mark.parametrize(
    ("modality", "photometric"), [("DX", "MONOCHROME2"), ("CR", "MONOCHROME1")]
)
def test_fracture_study_is_valid_dicom(tmp_path: Path, modality: str, photometric: str) -> None:
    paths = write_study(
        fracture_study(fracture=True, seed=1, modality=modality, photometric=photometric),
        tmp_path,
    )
    assert len(paths) == 2
    for path in paths:
        assert dciodvfy_errors(path) == []
        ds = pydicom.dcmread(path)
        assert ds.Modality == modality
        assert ds.PhotometricInterpretation == photometric
        assert ds.BodyPartExamined == "FOREARM"
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
    views = {pydicom.dcmread(p).ViewPosition for p in paths}
    assert views == {"AP", "LL"}


def test_hand_study_is_valid_dicom_with_age_and_sex(tmp_path: Path) -> None:
    (path,) = write_study(bone_age_study(age_months=121, sex="F", seed=2), tmp_path)
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert (ds.PatientSex, ds.PatientAge, ds.BodyPartExamined, ds.ViewPosition) == (
        "F",
        "010Y",
        "HAND",
        "PA",
    )
    assert ds.ImageLaterality == "L"


def test_monochrome1_and_monochrome2_display_alike() -> None:
    m2 = fracture_study(fracture=False, seed=4, photometric="MONOCHROME2")[0]
    m1 = fracture_study(fracture=False, seed=4, photometric="MONOCHROME1")[0]
    a, b = radiograph_frames(m2)[0], radiograph_frames(m1)[0]
    assert np.abs(a - b).mean() < 0.01
    assert pixel_spacing_mm(m1) == pixel_spacing_mm(m2)


def _profile_across(image: np.ndarray) -> float:
    """Darkest point along the bone's axis, relative to its median (a lucent line is dark)."""
    column = image[:, image.shape[1] // 2 - 3 : image.shape[1] // 2 + 3].mean(axis=1)
    return float(column.min() / np.median(column))


def test_fracture_is_a_lucent_line_inside_the_box() -> None:
    rng = np.random.default_rng(3)
    image = long_bone_radiograph(rng, fracture=True, body_part="FEMUR")
    (box,) = image.boxes
    x0, y0, x1, y1 = (int(v) for v in box)
    inside = image.pixels[max(y0, 0) : y1, max(x0, 0) : x1].astype(float)
    rows_mean = inside.mean(axis=1)
    # somewhere across the box the bone is markedly less dense than elsewhere in the box
    assert rows_mean.min() < 0.93 * np.median(rows_mean)
    assert image.truth["fracture"] is True
    intact = long_bone_radiograph(np.random.default_rng(3), fracture=False, body_part="FEMUR")
    assert intact.boxes == []


def test_hand_matures_with_bone_age() -> None:
    """More bone (carpals, epiphyses, longer bones) at 12 years than at 1 year."""
    young = hand_radiograph(np.random.default_rng(0), bone_age_months=12, sex="M", spacing_mm=0.6)
    old = hand_radiograph(np.random.default_rng(0), bone_age_months=144, sex="M", spacing_mm=0.6)
    bright = lambda r: float((r.pixels > r.window_center).mean())  # noqa: E731
    assert bright(old) > 1.5 * bright(young)
