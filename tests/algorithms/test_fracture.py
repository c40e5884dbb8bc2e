"""Fracture detection on phantom radiographs, with the shipped demo weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifi.algorithms.base import Algorithm
from aifi.algorithms.fracture import FractureDetection
from aifi.algorithms.onnx_model import DEMO_DISCLAIMER
from aifi.errors import InputNotAccepted
from aifi.phantoms import chest_ct_series, fracture_study, write_study
from aifi.phantoms.write import as_algorithm_input


@pytest.fixture(scope="module")
def algorithm() -> FractureDetection:
    return FractureDetection()


def test_is_an_algorithm_with_a_demo_manifest(algorithm: FractureDetection) -> None:
    assert isinstance(algorithm, Algorithm)
    manifest = algorithm.manifest
    assert manifest.id == "fracture"
    assert DEMO_DISCLAIMER in manifest.regulatory_status
    assert {"BodyPartExamined", "ViewPosition", "ImageLaterality", "Laterality"} <= set(
        manifest.keep_attributes
    )
    assert manifest.model_sha256 and len(manifest.model_sha256) == 64


@pytest.mark.parametrize(
    ("modality", "photometric"), [("DX", "MONOCHROME2"), ("CR", "MONOCHROME1")]
)
def test_fracture_is_found_and_boxed(
    algorithm: FractureDetection, tmp_path: Path, modality: str, photometric: str
) -> None:
    study = fracture_study(fracture=True, seed=21, modality=modality, photometric=photometric)
    findings = algorithm.run(as_algorithm_input(write_study(study, tmp_path)))
    assert findings.details["category"] == "positive"
    assert findings.finding is not None and findings.finding.meaning == "Fracture of bone"
    assert findings.demo_model is True
    assert DEMO_DISCLAIMER in findings.summary
    assert len(findings.images) == 2
    boxed = [image for image in findings.images if image.boxes]
    assert boxed, "a positive study has at least one box"
    for image in boxed:
        source = next(ds for ds in study if ds.SOPInstanceUID == image.sop_instance_uid)
        for box in image.boxes:
            assert 0 <= box.x0 < box.x1 <= source.Columns + 16
            assert 0 <= box.y0 < box.y1 <= source.Rows + 16


def test_box_overlaps_the_true_fracture(algorithm: FractureDetection, tmp_path: Path) -> None:
    import numpy as np

    from aifi.phantoms import long_bone_radiograph, radiograph_dataset
    from aifi.phantoms.dicom import StudyContext

    image = long_bone_radiograph(np.random.default_rng(77), fracture=True, body_part="LEG")
    ds = radiograph_dataset(StudyContext(), image, body_part="LEG")
    findings = algorithm.run(as_algorithm_input(write_study([ds], tmp_path)))
    (truth,) = image.boxes
    (result,) = findings.images
    assert result.boxes
    best = result.boxes[0]
    overlap_x = min(best.x1, truth[2]) - max(best.x0, truth[0])
    overlap_y = min(best.y1, truth[3]) - max(best.y0, truth[1])
    assert overlap_x > 0 and overlap_y > 0


def test_intact_bones_are_negative(algorithm: FractureDetection, tmp_path: Path) -> None:
    study = fracture_study(fracture=False, seed=22, modality="DX")
    findings = algorithm.run(as_algorithm_input(write_study(study, tmp_path)))
    assert findings.details["category"] == "negative"
    assert findings.finding is None
    assert findings.urgent is False
    assert all(not image.boxes for image in findings.images)
    assert "No fracture" in findings.summary and DEMO_DISCLAIMER in findings.summary


def test_multi_frame_radiograph_gives_a_finding_per_frame(
    algorithm: FractureDetection, tmp_path: Path
) -> None:
    import numpy as np

    from aifi.phantoms import long_bone_radiograph, radiograph_dataset
    from aifi.phantoms.dicom import StudyContext

    image = long_bone_radiograph(np.random.default_rng(5), fracture=False)
    ds = radiograph_dataset(StudyContext(), image, frames=2)
    findings = algorithm.run(as_algorithm_input(write_study([ds], tmp_path)))
    assert [i.frame_number for i in findings.images] == [1, 2]


def test_ct_is_refused_with_the_reason(algorithm: FractureDetection, tmp_path: Path) -> None:
    study = chest_ct_series(embolus=False, seed=1, slices=2)
    with pytest.raises(InputNotAccepted, match="modality CT is not CR or DX"):
        algorithm.run(as_algorithm_input(write_study(study, tmp_path)))


def test_chest_radiograph_is_refused(algorithm: FractureDetection, tmp_path: Path) -> None:
    study = fracture_study(fracture=False, seed=3)
    for ds in study:
        ds.BodyPartExamined = "CHEST"
    with pytest.raises(InputNotAccepted, match="not of the appendicular skeleton"):
        algorithm.run(as_algorithm_input(write_study(study, tmp_path)))
