"""The chest CT phantom is a valid, geometrically consistent axial CT series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

from aifi.phantoms import chest_ct_series, chest_ct_volume, write_study

from .dicom_check import dciodvfy_errors


def test_series_is_valid_axial_ct_with_geometry(tmp_path: Path) -> None:
    paths = write_study(chest_ct_series(embolus=False, seed=1, slices=20), tmp_path)
    assert dciodvfy_errors(paths[0]) == []
    datasets = [pydicom.dcmread(p) for p in paths]
    assert {ds.SeriesInstanceUID for ds in datasets} == {datasets[0].SeriesInstanceUID}
    assert all(ds.ImageOrientationPatient == [1, 0, 0, 0, 1, 0] for ds in datasets)
    z = sorted(float(ds.ImagePositionPatient[2]) for ds in datasets)
    assert np.allclose(np.diff(z), 5.0)
    assert datasets[0].ContrastBolusAgent
    hu = apply_modality_lut(datasets[10].pixel_array, datasets[10])
    assert hu.min() < -900  # air
    assert ((hu > -950) & (hu < -600)).mean() > 0.1  # lungs


def test_non_contrast_series_has_no_contrast_agent() -> None:
    ds = chest_ct_series(embolus=False, contrast=False, seed=2, slices=2)[0]
    assert "ContrastBolusAgent" not in ds
    assert "C-" in ds.SeriesDescription


def test_embolus_is_a_filling_defect_in_an_enhanced_artery() -> None:
    volume = chest_ct_volume(np.random.default_rng(5), embolus=True)
    assert volume.emboli
    found = False
    for i in range(len(volume.slice_positions)):
        mask = volume.embolus_mask(i)
        if mask.sum() >= 4:
            found = True
            assert np.median(volume.hu[i][mask]) < 100  # clot, not contrast
    assert found
    assert (volume.hu > 150).sum() > 1000  # enhanced vessels and bone
