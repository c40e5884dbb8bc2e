"""Findings as a rendered summary image: a Secondary Capture any PACS can show.

For PACS viewers that show neither SR nor presentation states. One
Secondary Capture Image (PS3.3 A.8.1), 8-bit RGB, per result, built with
highdicom's :class:`highdicom.sc.SCImage`. The page (drawn by
:mod:`aifi.results.render`) holds:

* for a demo model, a red banner "DEMO MODEL - NOT FOR CLINICAL USE";
* the key image, windowed as a viewer would, with its boxes and points
  drawn and labelled "label score": the image whose box scored highest,
  else the first image with findings (the hand of a bone-age result), else
  the middle image of the study;
* a Source Image Sequence reference to the key image;
* the report: algorithm name and version, the summary, the study-level
  measurements (bone age, chronological age, SDS, probability) and the key
  image's text findings, and a line saying the result must be reviewed with
  the original images.

The text burned into the pixels is pseudonymous (no name, no ID), so
re-identifying the header at the edge is enough; Burned In Annotation
(0028,0301) is YES and Conversion Type (0008,0064) is WSD (workstation).
Like the other results it joins the source study with a new Series and
SOP Instance UID, in UTF-8 whatever the sources' character set and with
empty Type 2 attributes where the sources lack them
(:mod:`aifi.results.sources`), and names the algorithm as Contributing
Equipment.

Sources may be headers only (the hub reads them without pixel data): the
key image's pixel data is then read from the file it came from
(``ds.filename``). Without pixels the page holds the report alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from aifi.core.codes import PRESENCE
from aifi.core.findings import Box, Code, Findings, ImageFinding, Measurement
from aifi.core.manifest import Manifest
from aifi.results.gsps import DEMO_BANNER, series_laterality
from aifi.results.render import display_pixels, render_page
from aifi.results.sources import RESULT_CHARACTER_SET, check_sources, source_header
from aifi.results.sr import algorithm_equipment, series_description

__all__ = ["DEMO_BANNER", "SC_SERIES_NUMBER", "build_sc", "key_image"]

logger = logging.getLogger(__name__)

SC_SERIES_NUMBER = 9903
"""Default Series Number of rendered summary images; the hub numbers each series."""

_REVIEW = "AI result - review together with the original images."
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def build_sc(
    findings: Findings,
    manifest: Manifest,
    sources: Sequence[pydicom.Dataset],
    *,
    series_number: int = SC_SERIES_NUMBER,
    instance_number: int = 1,
) -> hd.sc.SCImage:
    """Render ``findings`` of ``manifest``'s algorithm on ``sources`` as one summary image.

    Raises ``ValueError`` when ``sources`` are empty, span several studies,
    or lack an image a finding refers to.
    """
    by_uid = check_sources(sources)
    missing = [i.sop_instance_uid for i in findings.images if i.sop_instance_uid not in by_uid]
    if missing:
        raise ValueError(f"findings refer to instance {missing[0]}, which is not in sources")

    key = key_image(findings, sources)
    source = by_uid[key.sop_instance_uid]
    pixels = _pixels(source, key.frame_number)
    page = render_page(
        pixels,
        key.boxes if pixels is not None else (),
        _report_lines(findings, manifest, key, source),
        banner=DEMO_BANNER if findings.demo_model else None,
    )
    header = source_header(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=page,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer="aifi",
        patient_orientation=("L", "F"),  # replaced below: highdicom takes single letters only
        contributing_equipment=[algorithm_equipment(manifest)],
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        specific_character_set=RESULT_CHARACTER_SET,
    )
    orientation: list[str] | str = _orientation(source) if pixels is not None else ""
    sc["PatientOrientation"].value = orientation
    sc.SeriesDescription = series_description(manifest, demo_model=findings.demo_model)
    sc.Laterality = series_laterality([source])
    sc.SourceImageSequence = [_source_reference(source, key.frame_number)]
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    logger.debug("SC %s for %s %s", sc.SOPInstanceUID, manifest.id, manifest.version)
    return sc


def key_image(findings: Findings, sources: Sequence[pydicom.Dataset]) -> ImageFinding:
    """The image the summary shows: highest-scoring box, else first finding, else middle image."""
    boxed = [image for image in findings.images if image.boxes]
    if boxed:
        return max(boxed, key=lambda image: max(box.score for box in image.boxes))
    if findings.images:
        return findings.images[0]
    ordered = sorted(
        sources, key=lambda ds: (str(ds.SeriesInstanceUID), int(ds.get("InstanceNumber") or 0))
    )
    return ImageFinding(str(ordered[len(ordered) // 2].SOPInstanceUID))


def _report_lines(
    findings: Findings, manifest: Manifest, key: ImageFinding, source: pydicom.Dataset
) -> list[str]:
    lines = [f"{manifest.name} {manifest.version} ({manifest.vendor})", "", findings.summary, ""]
    lines.append(_where(source, key.frame_number))
    lines += _evaluation_lines(findings, key)
    lines += [_measurement_line(m) for m in findings.measurements]
    lines += [_measurement_line(m) for m in key.measurements if m not in findings.measurements]
    lines += [f"{code.meaning}: {value}" for code, value in key.texts if value.isprintable()]
    lines += _box_lines(key.boxes)
    if findings.demo_model:
        lines += ["", DEMO_BANNER]
    lines += ["", _REVIEW]
    return lines


def _where(source: pydicom.Dataset, frame_number: int | None) -> str:
    """Where the key image is in the study, for a reader to find it among the originals."""
    where = f"Image shown: series {source.get('SeriesNumber', '?')}"
    where += f", image {source.get('InstanceNumber', '?')}"
    return where + (f", frame {frame_number}" if frame_number else "")


def _evaluation_lines(findings: Findings, key: ImageFinding) -> list[str]:
    """The coded answers in words: "Pulmonary embolism: Absent", "Normality: Normal", ..."""
    pairs: list[tuple[Code, Code]] = []
    if findings.finding_type is not None and findings.presence is not None:
        pairs.append((findings.finding_type, findings.presence))
    pairs += findings.evaluations
    shown = f"{findings.finding_type.meaning} on the image shown" if findings.finding_type else None
    for name, value in key.evaluations:
        pair = (
            (Code(name.value, name.scheme, shown), value)
            if name == PRESENCE and shown
            else (name, value)
        )
        if pair not in pairs:
            pairs.append(pair)
    return [f"{name.meaning}: {value.meaning}" for name, value in pairs]


def _measurement_line(measurement: Measurement) -> str:
    unit = measurement.unit
    no_unit = unit.scheme == "UCUM" and unit.value == "1"
    suffix = "" if no_unit else f" {unit.meaning}"
    return f"{measurement.concept.meaning}: {measurement.value:g}{suffix}"


def _box_lines(boxes: Sequence[Box]) -> list[str]:
    return [
        f"{box.label} {box.score:.2f} at column {round((box.x0 + box.x1) / 2)}, "
        f"row {round((box.y0 + box.y1) / 2)}"
        for box in boxes
    ]


def _pixels(source: pydicom.Dataset, frame_number: int | None) -> np.ndarray | None:
    """The key image as 8-bit RGB, reading pixel data from its file when the header lacks it."""
    ds = source
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        filename = getattr(ds, "filename", None)
        if not isinstance(filename, str | Path) or not Path(filename).is_file():
            logger.info("no pixel data for %s: summary without image", ds.SOPInstanceUID)
            return None
        ds = pydicom.dcmread(filename)
    try:
        return display_pixels(ds, frame_number)
    except (AttributeError, ValueError, RuntimeError, NotImplementedError) as exc:
        logger.warning(
            "pixel data of %s not decodable (%s): summary without image", ds.SOPInstanceUID, exc
        )
        return None


def _source_reference(source: pydicom.Dataset, frame_number: int | None) -> pydicom.Dataset:
    """Source Image Sequence item (PS3.3 C.7.6.1.1.4) for the key image the page shows.

    The page is rescaled and framed, so spatial locations are not preserved.
    """
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_number is not None and int(source.get("NumberOfFrames", 1) or 1) > 1:
        item.ReferencedFrameNumber = frame_number
    item.SpatialLocationsPreserved = "NO"
    return item


def _orientation(ds: pydicom.Dataset) -> list[str] | str:
    """Patient Orientation (PS3.3 C.7.6.1.1.1) of the key image's rows and columns.

    The image's own Patient Orientation, else the dominant axis of its Image
    Orientation (Patient) direction cosines, else empty (Type 2: unknown).
    """
    value = ds.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2:
        return [str(v) for v in value]
    cosines = ds.get("ImageOrientationPatient")
    if cosines is None or len(cosines) != 6:
        return ""
    directions = []
    for vector in (cosines[:3], cosines[3:]):
        axis = int(np.argmax(np.abs(vector)))
        directions.append(("LPH" if float(vector[axis]) > 0 else "RAF")[axis])
    return directions
