"""Findings as a rendered summary image (Secondary Capture), checked in its pixels and header.

Studies: the phantom fixtures of ``conftest.py``, passed as the hub passes
them (headers read without pixel data from the stored files).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import SecondaryCaptureImageStorage

from aifi.algorithms.base import Box, Code, Findings, ImageFinding, Measurement
from aifi.results.render import PAGE_WIDTH, display_pixels
from aifi.results.sc import build_sc

from .helpers import MANIFEST, dciodvfy_errors, headers, probability, saved

MONTHS = Code("mo", "UCUM", "months")


def yellow(pixels: np.ndarray) -> np.ndarray:
    """Mask of the box colour (255, 200, 0)."""
    r, g, b = pixels[..., 0].astype(int), pixels[..., 1].astype(int), pixels[..., 2].astype(int)
    return (r > 230) & (g > 170) & (g < 230) & (b < 40)


def test_the_key_image_is_shown_with_its_box(radiographs: list[Path], tmp_path: Path) -> None:
    sources = headers(radiographs)
    ap, lateral = sources
    findings = Findings(
        summary="Fracture suspected (score 0.87)",
        images=(
            ImageFinding(ap.SOPInstanceUID, boxes=(Box(100, 100, 200, 300, "fracture", 0.4),)),
            ImageFinding(lateral.SOPInstanceUID, boxes=(Box(50, 60, 150, 160, "fracture", 0.87),)),
        ),
    )

    path = saved(build_sc(findings, MANIFEST, sources), tmp_path, "sc")

    assert dciodvfy_errors(path) == []
    sc = pydicom.dcmread(path)
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    assert sc.BurnedInAnnotation == "YES"
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber"):
        assert sc[keyword].value == lateral[keyword].value, keyword
    assert sc.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in sources}
    # the key image is the one whose box scored highest
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == lateral.SOPInstanceUID
    assert sc.Columns == PAGE_WIDTH
    pixels = sc.pixel_array
    # the radiograph was read from its file: the image area is not blank
    image_area = pixels[: sc.Rows // 2]
    assert image_area.std() > 10
    # the box is drawn: yellow pixels along its left edge, none far from it
    scale = min(PAGE_WIDTH / lateral.Columns, PAGE_WIDTH / lateral.Rows)
    left = (PAGE_WIDTH - round(lateral.Columns * scale)) // 2
    column = round(left + 50 * scale)
    rows = slice(round(70 * scale), round(150 * scale))
    assert yellow(pixels[rows, column - 2 : column + 3]).any(axis=1).mean() > 0.9
    assert not yellow(pixels[round(400 * scale) :, : left + round(20 * scale)]).any()
    algorithm = [e for e in sc.ContributingEquipmentSequence if e.Manufacturer == MANIFEST.vendor]
    assert algorithm[0].SoftwareVersions == "2.1.0"


def test_a_demo_model_gets_a_red_banner(radiographs: list[Path]) -> None:
    sources = headers(radiographs)
    findings = Findings(summary="No fracture detected", images=(), demo_model=True)

    sc = build_sc(findings, MANIFEST, sources)

    top = sc.pixel_array[5:50]
    red = (top[..., 0] > 180) & (top[..., 1] < 30) & (top[..., 2] < 30)
    assert red.mean() > 0.5
    assert sc.SeriesDescription.endswith("demo model - not for clinical use")
    plain = build_sc(dataclasses.replace(findings, demo_model=False), MANIFEST, sources)
    plain_top = plain.pixel_array[5:50]
    assert not ((plain_top[..., 0] > 180) & (plain_top[..., 1] < 30)).any()


def test_bone_age_page_shows_the_hand_and_the_report(hand: list[Path], tmp_path: Path) -> None:
    sources = headers(hand)
    findings = Findings(
        summary="Bone age 10 y 0 mo; chronological age 8 y 0 mo; SDS +2.0",
        measurements=(
            Measurement(Code("443849008", "SCT", "Bone age"), 120.0, MONTHS),
            Measurement(Code("445518008", "SCT", "Chronological age"), 96.0, MONTHS),
            Measurement(Code("SDS", "99AIFI", "Bone age SDS"), 2.0, Code("1", "UCUM", "no units")),
        ),
        images=(ImageFinding(sources[0].SOPInstanceUID),),
    )

    path = saved(build_sc(findings, MANIFEST, sources), tmp_path, "sc")

    assert dciodvfy_errors(path) == []
    sc = pydicom.dcmread(path)
    hand_height = round(
        int(sources[0].Rows) * min(PAGE_WIDTH / sources[0].Columns, PAGE_WIDTH / sources[0].Rows)
    )
    assert sc.Rows > hand_height + 8 * 30  # report lines under the image
    report = sc.pixel_array[hand_height:]
    assert (report > 200).any()  # white text on black
    assert list(sc.PatientOrientation) == ["R", "H"]  # the hand radiograph's own
    assert sc.Laterality == "L"


def test_monochrome1_is_shown_inverted(hand: list[Path]) -> None:
    ds = pydicom.dcmread(hand[0])
    assert ds.PhotometricInterpretation == "MONOCHROME1"

    shown = display_pixels(ds)
    ds.PhotometricInterpretation = "MONOCHROME2"
    as_monochrome2 = display_pixels(ds)

    np.testing.assert_array_equal(shown.astype(int) + as_monochrome2.astype(int), 255)


def test_the_embolus_slice_is_the_key_image(chest_ct: list[Path], tmp_path: Path) -> None:
    sources = headers(chest_ct)
    slice_ = sources[5]
    findings = Findings(
        summary="Pulmonary embolism suspected (probability 0.90)",
        urgent=True,
        measurements=(probability(0.9),),
        images=(ImageFinding(slice_.SOPInstanceUID, boxes=(Box(90, 80, 90, 80, "embolus", 0.9),)),),
    )

    path = saved(build_sc(findings, MANIFEST, sources), tmp_path, "sc")

    assert dciodvfy_errors(path) == []
    sc = pydicom.dcmread(path)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == slice_.SOPInstanceUID
    assert list(sc.PatientOrientation) == ["L", "P"]  # axial, from Image Orientation (Patient)
    scale = PAGE_WIDTH / int(slice_.Columns)
    ring = sc.pixel_array[
        round(80 * scale) - 20 : round(80 * scale) + 20,
        round(90 * scale) - 20 : round(90 * scale) + 20,
    ]
    assert yellow(ring).any()


def test_without_pixel_data_the_page_holds_the_report(
    radiographs: list[Path], tmp_path: Path
) -> None:
    header = headers(radiographs)[0]
    detached = pydicom.Dataset()
    detached.update(header)  # no file behind it
    findings = Findings(summary="No fracture detected")

    path = saved(build_sc(findings, MANIFEST, [detached]), tmp_path, "sc")

    assert dciodvfy_errors(path) == []
    sc = pydicom.dcmread(path)
    assert sc.Columns == PAGE_WIDTH and sc.Rows < 400
    assert sc.PatientOrientation == ""
