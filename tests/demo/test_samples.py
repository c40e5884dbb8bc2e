"""Sample studies are complete, valid DICOM: checked with dicom3tools' dciodvfy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage, JPEG2000Lossless

from aifi.demo.samples import (
    DEMO_PATIENTS,
    compressed,
    cr_study,
    ct_series,
    leak_canary,
    write_study,
)

_PATH = os.environ.get("PATH", "")


def _iod_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for one file (warnings are not errors)."""
    dciodvfy = shutil.which("dciodvfy", path=f"{Path(sys.executable).parent}{os.pathsep}{_PATH}")
    if dciodvfy is None:
        pytest.skip("dicom3tools' dciodvfy is not installed (test extra)")
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]


def test_cr_study_is_a_valid_cr_iod(tmp_path: Path) -> None:
    paths = write_study(cr_study(n_images=2), tmp_path)

    for path in paths:
        assert _iod_errors(path) == []
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == ComputedRadiographyImageStorage
    assert (ds.Rows, ds.Columns, ds.BitsStored) == (1024, 1024, 12)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.pixel_array.max() <= 4095
    assert ds.pixel_array.std() > 100  # structure, not a flat image


def test_cr_study_is_one_study_of_fictitious_identity() -> None:
    datasets = cr_study(n_images=4)

    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 4
    assert {str(ds.PatientName) for ds in datasets} == {"DEMO^ALICE"}
    assert [ds.ViewPosition for ds in datasets] == ["PA", "AP", "LL", "RL"]
    assert all(ds.AccessionNumber and ds.InstitutionName for ds in datasets)


def test_every_instance_carries_the_leak_canary() -> None:
    ds = cr_study(n_images=1, rows=64, columns=64, patient=DEMO_PATIENTS[1])[0]

    assert leak_canary(ds) == "DEMO-0002 canary"
    del ds[0x00090010]
    assert leak_canary(ds) is None


def test_seed_makes_uids_reproducible() -> None:
    first = cr_study(n_images=1, rows=64, columns=64, seed="x")[0]
    again = cr_study(n_images=1, rows=64, columns=64, seed="x")[0]
    other = cr_study(n_images=1, rows=64, columns=64)[0]

    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.StudyInstanceUID != other.StudyInstanceUID


def test_child_patient_age_is_in_years() -> None:
    ds = cr_study(n_images=1, rows=64, columns=64, patient=DEMO_PATIENTS[1])[0]

    assert ds.PatientAge.endswith("Y")
    assert ds.PatientSex == "M"


def test_ct_series_has_consistent_geometry(tmp_path: Path) -> None:
    datasets = list(ct_series(n_slices=5))
    paths = write_study(datasets, tmp_path)

    assert _iod_errors(paths[0]) == []
    assert {ds.SOPClassUID for ds in datasets} == {CTImageStorage}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert all(abs(a - b) == pytest.approx(datasets[0].SliceThickness) for a, b in pairwise(z))
    assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3, 4, 5]
    assert 500_000 < paths[0].stat().st_size < 560_000
    hu = datasets[0].pixel_array * datasets[0].RescaleSlope + datasets[0].RescaleIntercept
    assert hu.min() < -800  # air and lungs
    assert np.percentile(hu, 99.9) > 250  # contrast-filled vessels and bone


def test_compressed_copy_is_lossless_and_same_instance() -> None:
    ds = cr_study(n_images=1, rows=128, columns=128)[0]

    copy = compressed(ds)

    assert copy.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert copy.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(copy.pixel_array, ds.pixel_array)
    assert ds.file_meta.TransferSyntaxUID != JPEG2000Lossless  # original untouched


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="n_images"):
        cr_study(n_images=0)
    with pytest.raises(ValueError, match="n_slices"):
        next(ct_series(n_slices=0))
