"""Findings as Grayscale Softcopy Presentation States, checked as a viewer would read them.

Studies: the phantom fixtures of ``conftest.py``; one multi-frame image from
pydicom's test files (emri_small_RLE.dcm, 10-frame Enhanced MR).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import GrayscaleSoftcopyPresentationStateStorage, generate_uid

from aifi.algorithms.base import Box, Code, Findings, ImageFinding
from aifi.results.gsps import DEMO_BANNER, build_gsps

from .helpers import MANIFEST, dciodvfy_errors, dcmtk, headers, probability, saved

FRACTURE = Code("72704001", "SCT", "Fracture")


def texts(gsps: pydicom.Dataset) -> list[str]:
    return [
        str(text.UnformattedTextValue)
        for annotation in gsps.GraphicAnnotationSequence
        for text in annotation.get("TextObjectSequence", [])
    ]


def test_boxes_become_rectangles_with_labels_on_their_images(
    radiographs: list[Path], tmp_path: Path
) -> None:
    sources = headers(radiographs)
    ap, lateral = sources
    findings = Findings(
        summary="Fracture suspected (score 0.87)",
        finding=FRACTURE,
        images=(
            ImageFinding(ap.SOPInstanceUID, boxes=(Box(10, 20, 50, 60, "fracture", 0.87),)),
            ImageFinding(lateral.SOPInstanceUID, boxes=(Box(5, 6, 7, 8, "fracture", 0.4),)),
        ),
    )

    states = build_gsps(findings, MANIFEST, sources)

    assert len(states) == 2  # the two views differ in size: one presentation state each
    assert len({gsps.SeriesInstanceUID for gsps in states}) == 1
    for number, (state, source) in enumerate(zip(states, sources, strict=True)):
        path = saved(state, tmp_path, f"gsps{number}")
        assert dciodvfy_errors(path) == []
        check = dcmtk("dcmpschk", path)
        assert "Test passed" in check.stdout + check.stderr, check.stdout
        gsps = pydicom.dcmread(path)
        assert gsps.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
        assert gsps.Modality == "PR"
        for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber"):
            assert gsps[keyword].value == source[keyword].value, keyword
        assert gsps.SeriesInstanceUID != source.SeriesInstanceUID
        (annotation,) = gsps.GraphicAnnotationSequence
        assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == (
            source.SOPInstanceUID
        )
        (rectangle,) = annotation.GraphicObjectSequence
        assert rectangle.GraphicType == "POLYLINE"
        assert rectangle.GraphicAnnotationUnits == "PIXEL"
        box = findings.images[number].boxes[0]
        corners = [box.x0, box.y0, box.x1, box.y0, box.x1, box.y1, box.x0, box.y1]
        np.testing.assert_allclose(rectangle.GraphicData, [*corners, box.x0, box.y0])
    assert texts(states[0])[0] == "fracture 0.87"
    assert "Fracture suspected (score 0.87)" in texts(states[0])


def test_the_presentation_state_names_the_algorithm(radiographs: list[Path]) -> None:
    sources = headers(radiographs)
    findings = Findings(
        summary="x",
        images=(ImageFinding(sources[0].SOPInstanceUID, boxes=(Box(1, 1, 9, 9, "a", 1),)),),
    )

    (gsps,) = build_gsps(findings, MANIFEST, sources)

    algorithm = [e for e in gsps.ContributingEquipmentSequence if e.Manufacturer == MANIFEST.vendor]
    assert algorithm[0].ManufacturerModelName == "test-detector"
    assert algorithm[0].SoftwareVersions == "2.1.0"
    assert gsps.ContentLabel == "TEST_DETECTOR"
    assert gsps.SeriesDescription == "Test detector 2.1.0"
    assert gsps.GraphicLayerSequence[0].GraphicLayerDescription == "Test detector 2.1.0"


def test_a_location_is_a_point_in_a_circle(chest_ct: list[Path], tmp_path: Path) -> None:
    sources = headers(chest_ct)
    slice_ = sources[4]
    findings = Findings(
        summary="Pulmonary embolism suspected",
        urgent=True,
        measurements=(probability(0.9),),
        images=(ImageFinding(slice_.SOPInstanceUID, boxes=(Box(90, 80, 90, 80, "embolus", 0.9),)),),
    )

    (gsps,) = build_gsps(findings, MANIFEST, sources)

    path = saved(gsps, tmp_path, "gsps")
    assert dciodvfy_errors(path) == []
    graphics = pydicom.dcmread(path).GraphicAnnotationSequence[0].GraphicObjectSequence
    assert [g.GraphicType for g in graphics] == ["POINT", "CIRCLE"]
    np.testing.assert_allclose(graphics[0].GraphicData, [90, 80])
    np.testing.assert_allclose(graphics[1].GraphicData[:2], [90, 80])
    assert gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == (
        slice_.SOPInstanceUID
    )
    # the CT's own window travels with the presentation state
    assert "SoftcopyVOILUTSequence" in gsps and "RescaleSlope" in gsps


def test_a_demo_model_says_so_on_the_image(radiographs: list[Path]) -> None:
    sources = headers(radiographs)
    findings = Findings(
        summary="Fracture suspected (demo model — not for clinical use)",
        demo_model=True,
        images=(ImageFinding(sources[0].SOPInstanceUID, boxes=(Box(1, 1, 9, 9, "fracture", 1),)),),
    )

    (gsps,) = build_gsps(findings, MANIFEST, sources)

    assert DEMO_BANNER == "DEMO MODEL - NOT FOR CLINICAL USE"
    assert DEMO_BANNER in texts(gsps)
    # viewers show ASCII reliably: the dash is plain
    assert "Fracture suspected (demo model - not for clinical use)" in texts(gsps)
    assert gsps.SeriesDescription.endswith("demo model - not for clinical use")


def test_without_boxes_the_key_image_carries_the_summary(hand: list[Path], tmp_path: Path) -> None:
    sources = headers(hand)
    findings = Findings(
        summary="Bone age 10 y 0 mo; chronological age 8 y 0 mo; SDS +2.0",
        images=(ImageFinding(sources[0].SOPInstanceUID),),
    )

    (gsps,) = build_gsps(findings, MANIFEST, sources)

    path = saved(gsps, tmp_path, "gsps")
    assert dciodvfy_errors(path) == []
    (annotation,) = gsps.GraphicAnnotationSequence
    assert "GraphicObjectSequence" not in annotation
    assert texts(gsps) == [findings.summary]
    assert gsps.Laterality == "L"  # the left hand, from the image


def test_a_frame_of_a_multiframe_image_is_referenced(tmp_path: Path) -> None:
    ds = pydicom.dcmread(str(get_testdata_file("emri_small_RLE.dcm")), stop_before_pixels=True)
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    findings = Findings(
        summary="x",
        images=(ImageFinding(ds.SOPInstanceUID, frame_number=3, boxes=(Box(1, 2, 3, 4, "a", 1),)),),
    )

    (gsps,) = build_gsps(findings, MANIFEST, [ds])

    reference = gsps.GraphicAnnotationSequence[0].ReferencedImageSequence[0]
    assert reference.ReferencedFrameNumber == 3


def test_findings_on_an_image_not_in_sources_are_refused(radiographs: list[Path]) -> None:
    findings = Findings(summary="x", images=(ImageFinding(generate_uid()),))

    with pytest.raises(ValueError, match="not in sources"):
        build_gsps(findings, MANIFEST, headers(radiographs))
