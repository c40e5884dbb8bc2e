"""Incidental PE on phantom chest CT, with the shipped demo weights."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from aifi.algorithms.incidental_pe import IncidentalPE
from aifi.algorithms.incidental_pe.algorithm import DEMO_STORE
from aifi.algorithms.onnx_model import DEMO_DISCLAIMER
from aifi.errors import InputNotAccepted
from aifi.phantoms import chest_ct_series, chest_ct_volume, fracture_study, write_study
from aifi.phantoms.write import as_algorithm_input


@pytest.fixture(scope="module")
def algorithm() -> IncidentalPE:
    return IncidentalPE()


def with_threshold(tmp_path: Path, threshold: float) -> IncidentalPE:
    """The demo model from a copied store whose manifest sets ``positive_threshold``."""
    store = Path(shutil.copytree(DEMO_STORE, tmp_path / "store"))
    manifest = store / "incidental-pe.toml"
    text = manifest.read_text(encoding="utf-8")
    start = text.index("positive_threshold")
    manifest.write_text(text[:start] + f"positive_threshold = {threshold}\n", encoding="utf-8")
    return IncidentalPE(model_store=store)


def test_positive_result_is_urgent_with_locations(tmp_path: Path) -> None:
    """Above the threshold: urgent, PE coded, locations on slices of the chosen series."""
    study = chest_ct_series(embolus=True, seed=49)
    findings = with_threshold(tmp_path, 0.0).run(
        as_algorithm_input(write_study(study, tmp_path / "s"))
    )
    assert findings.urgent is True
    assert findings.finding is not None and findings.finding.value == "59282003"
    assert "urgent" in findings.summary and DEMO_DISCLAIMER in findings.summary
    uids = {ds.SOPInstanceUID for ds in study}
    locations = findings.details["locations"]
    assert 1 <= len(locations) <= 5
    for location in locations:
        assert location["sop_instance_uid"] in uids
        assert 0 <= location["column"] <= study[0].Columns
        assert 0 <= location["row"] <= study[0].Rows
    assert [i.sop_instance_uid for i in findings.images] == [
        loc["sop_instance_uid"] for loc in locations
    ]


def test_below_threshold_is_not_urgent(tmp_path: Path) -> None:
    study = chest_ct_series(embolus=True, seed=49)
    findings = with_threshold(tmp_path, 1.01).run(
        as_algorithm_input(write_study(study, tmp_path / "s"))
    )
    assert findings.urgent is False and findings.finding is None
    assert findings.details["locations"] == []
    assert 0.0 <= findings.details["probability"] <= 1.0


def test_manifest_keeps_what_selection_needs(algorithm: IncidentalPE) -> None:
    keep = set(algorithm.manifest.keep_attributes)
    assert {"SeriesDescription", "ContrastBolusAgent", "SliceThickness"} <= keep
    assert {"ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"} <= keep
    assert DEMO_DISCLAIMER in algorithm.manifest.regulatory_status


def test_embolus_is_found_urgent_and_located(algorithm: IncidentalPE, tmp_path: Path) -> None:
    volume = chest_ct_volume(np.random.default_rng(41), embolus=True)
    study = chest_ct_series(embolus=True, seed=41, volume=volume)
    findings = algorithm.run(as_algorithm_input(write_study(study, tmp_path)))
    assert findings.details["positive"] is True
    assert findings.urgent is True
    assert findings.finding is not None and findings.finding.value == "59282003"
    assert DEMO_DISCLAIMER in findings.summary and findings.demo_model is True
    # the most probable location lies on a slice through an embolus, near it in-plane
    first = findings.details["locations"][0]
    by_uid = {ds.SOPInstanceUID: ds for ds in study}
    ds = by_uid[first["sop_instance_uid"]]
    z = float(ds.ImagePositionPatient[2])
    spacing = float(ds.PixelSpacing[0])
    x = float(ds.ImagePositionPatient[0]) + first["column"] * spacing
    y = float(ds.ImagePositionPatient[1]) + first["row"] * spacing
    assert any(
        abs(z - e.z) <= e.half_length + 10 and np.hypot(x - e.x, y - e.y) < 30
        for e in volume.emboli
    )
    assert findings.images and findings.images[0].boxes


def test_no_embolus_is_negative(algorithm: IncidentalPE, tmp_path: Path) -> None:
    study = chest_ct_series(embolus=False, seed=42)
    findings = algorithm.run(as_algorithm_input(write_study(study, tmp_path)))
    assert findings.details["positive"] is False
    assert findings.urgent is False
    assert findings.finding is None
    assert "No pulmonary embolism" in findings.summary


def test_chooses_the_suitable_series(algorithm: IncidentalPE, tmp_path: Path) -> None:
    contrast = chest_ct_series(embolus=False, seed=43, series_number=3)
    study = contrast[0].StudyInstanceUID
    from aifi.phantoms.dicom import StudyContext

    context = StudyContext(study_instance_uid=study)
    plain = chest_ct_series(embolus=False, contrast=False, seed=44, study=context)
    thick = chest_ct_series(embolus=False, seed=45, slice_thickness=8.0, slices=30, study=context)
    paths = write_study(contrast + plain + thick, tmp_path)
    findings = algorithm.run(as_algorithm_input(paths))
    assert findings.details["series_instance_uid"] == contrast[0].SeriesInstanceUID


def test_non_contrast_ct_is_refused(algorithm: IncidentalPE, tmp_path: Path) -> None:
    study = chest_ct_series(embolus=False, contrast=False, seed=46)
    with pytest.raises(InputNotAccepted, match="no contrast"):
        algorithm.run(as_algorithm_input(write_study(study, tmp_path)))


def test_non_chest_ct_is_refused(algorithm: IncidentalPE, tmp_path: Path) -> None:
    study = chest_ct_series(embolus=False, seed=47, region="ABDOMEN")
    with pytest.raises(InputNotAccepted, match="ABDOMEN does not cover the chest"):
        algorithm.run(as_algorithm_input(write_study(study, tmp_path)))


def test_abdomen_labelled_chest_is_refused_on_its_pixels(
    algorithm: IncidentalPE, tmp_path: Path
) -> None:
    study = chest_ct_series(embolus=False, seed=48, region="ABDOMEN")
    for ds in study:
        ds.BodyPartExamined = "CHEST"
    with pytest.raises(InputNotAccepted, match="does not cover the chest: lung tissue"):
        algorithm.run(as_algorithm_input(write_study(study, tmp_path)))


def test_radiograph_is_refused(algorithm: IncidentalPE, tmp_path: Path) -> None:
    with pytest.raises(InputNotAccepted, match="modality DX is not CT"):
        algorithm.run(as_algorithm_input(write_study(fracture_study(fracture=False), tmp_path)))


def test_slice_order_does_not_matter(algorithm: IncidentalPE, tmp_path: Path) -> None:
    """Slices are ordered by Image Position (Patient), not by file or Instance Number."""
    study = chest_ct_series(embolus=True, seed=41)
    for number, ds in enumerate(reversed(study), start=1):
        ds.InstanceNumber = number
    a = algorithm.run(as_algorithm_input(write_study(study, tmp_path / "a")))
    b = algorithm.run(as_algorithm_input(write_study(study[::-1], tmp_path / "b")))
    assert a.details["probability"] == b.details["probability"]


def _peak_traced_mb(algorithm: IncidentalPE, folder: Path, slices: int) -> float:
    """Python/numpy memory at the peak of one run on a ``slices``-slice series (tracemalloc)."""
    study = chest_ct_series(
        embolus=True, seed=41, slices=slices, slice_thickness=round(5.0 * 48 / slices, 3)
    )
    inputs = as_algorithm_input(write_study(study, folder))
    del study
    tracemalloc.start()
    try:
        algorithm.run(inputs)
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def test_memory_grows_by_canvases_not_by_slices_read(
    algorithm: IncidentalPE, tmp_path: Path
) -> None:
    """Five times the slices cost their 128 x 128 canvases, never a volume of HU.

    Each slice is read alone and brought to the model's grid at once (issue 12:
    memory flat in study size); holding the study in Hounsfield units would add
    192 x 192 x 8 bytes per extra slice (about 56 MB here), the canvases add
    128 x 128 x 4 bytes (about 12.6 MB) and the headers a little.
    """
    algorithm.run(as_algorithm_input(write_study(chest_ct_series(embolus=False), tmp_path / "w")))
    small = _peak_traced_mb(algorithm, tmp_path / "small", 48)
    large = _peak_traced_mb(algorithm, tmp_path / "large", 240)
    print(f"peak traced: {small:.1f} MB at 48 slices, {large:.1f} MB at 240")
    assert large - small < 30.0


def test_batches_do_not_change_the_answer(
    algorithm: IncidentalPE, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model sees a few slices a call; one slice a call gives the same numbers."""
    import aifi.algorithms.incidental_pe.algorithm as module

    inputs = as_algorithm_input(write_study(chest_ct_series(embolus=True, seed=41), tmp_path))
    batched = algorithm.run(inputs)
    monkeypatch.setattr(module, "BATCH", 1)
    single = algorithm.run(inputs)
    assert single.details["probability"] == batched.details["probability"]
    assert single.details["locations"] == batched.details["locations"]
