"""Findings as a Grayscale Softcopy Presentation State: boxes a viewer draws on the images.

For viewers that show presentation states but not SR (IHE AI Results lists
both). The object follows PS3.3 A.33.1 (Grayscale Softcopy Presentation
State IOD), built with highdicom:

* one Graphic Layer (PS3.3 C.10.7) "AI FINDINGS" described by the
  algorithm's name and version;
* one presentation state per image size, and per multi-frame image (its
  Displayed Area and LUTs apply to all its images), all in one series;
* per source image (and frame) with boxes, one Graphic Annotation
  (PS3.3 C.10.5) referencing that image: each box a closed POLYLINE in
  PIXEL units, a box of zero size (a location) a POINT with a CIRCLE
  around it, and a text object "label score" anchored at its corner;
* on every annotated image the summary, and for a demo model the notice
  "DEMO MODEL - NOT FOR CLINICAL USE", as text in DISPLAY units;
* when no image carries a box (a negative result, a bone age), the
  presentation state annotates the key image (the first image with
  findings, else the first source) with the summary alone, so that what the
  algorithm said is visible wherever the images are;
* Modality and VOI LUTs are taken from the referenced images; the
  Presentation LUT Shape (PS3.3 C.11.6.1.1) is INVERSE for MONOCHROME1
  images and IDENTITY for MONOCHROME2, so that the image is shown with its
  own polarity (bone white on a radiograph, PS3.3 C.7.6.3.1.2): a
  presentation state's P-values are always "white is high", and a
  MONOCHROME1 image has its minimum displayed white;
* the Contributing Equipment Sequence names the algorithm, its vendor and
  version (as in :mod:`aifi.results.sr`).

Like the SR, the presentation state joins the source study with a new
Series and SOP Instance UID, in UTF-8 whatever the sources' character set
(:mod:`aifi.results.sources`); headers without pixel data suffice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.multival import MultiValue

import aifi
from aifi.core.findings import Box, Findings, ImageFinding
from aifi.core.manifest import Manifest
from aifi.results.render import plain_punctuation
from aifi.results.sources import RESULT_CHARACTER_SET, check_sources, source_header
from aifi.results.sr import algorithm_equipment, is_point, series_description

__all__ = ["DEMO_BANNER", "GSPS_SERIES_NUMBER", "build_gsps", "series_laterality"]

logger = logging.getLogger(__name__)

GSPS_SERIES_NUMBER = 9902
"""Default Series Number of result presentation states; the hub numbers each series."""

DEMO_BANNER = "DEMO MODEL - NOT FOR CLINICAL USE"
"""Text shown on images annotated by a demo model (ASCII: ST in any character set)."""

_LAYER = "AI FINDINGS"
_POINT_RADIUS = 6.0
_MAX_TEXT = 1024  # Unformatted Text Value (0070,0006) is ST


def build_gsps(
    findings: Findings,
    manifest: Manifest,
    sources: Sequence[pydicom.Dataset],
    *,
    series_number: int = GSPS_SERIES_NUMBER,
) -> list[hd.pr.GrayscaleSoftcopyPresentationState]:
    """Encode the boxes of ``findings`` on ``sources`` as presentation states, in one series.

    One presentation state per image size: its Displayed Area and Graphic
    Annotations apply to images of one size (highdicom requires it), so two
    radiograph views of different sizes get one each. ``sources`` are the
    (pseudonymized) grayscale images of one study the algorithm ran on.
    Raises ``ValueError`` when they are empty, span several studies, or lack
    an image a finding refers to.
    """
    sources = [source_header(ds) for ds in sources]
    by_uid = check_sources(sources)
    missing = [i.sop_instance_uid for i in findings.images if i.sop_instance_uid not in by_uid]
    if missing:
        raise ValueError(f"findings refer to instance {missing[0]}, which is not in sources")

    marked = [image for image in findings.images if image.boxes]
    if not marked:
        key = findings.images[0] if findings.images else ImageFinding(_first_uid(sources))
        marked = [ImageFinding(key.sop_instance_uid, frame_number=key.frame_number)]
    by_size: dict[tuple[int, int, str], list[ImageFinding]] = {}
    for image in marked:
        ds = by_uid[image.sop_instance_uid]
        alone = str(ds.SOPInstanceUID) if _is_multiframe(ds) else ""
        # one Presentation LUT per presentation state: polarities apart too
        group = (int(ds.Rows), int(ds.Columns), alone + _photometric(ds))
        by_size.setdefault(group, []).append(image)
    series_instance_uid = hd.UID()
    return [
        _presentation_state(
            findings,
            manifest,
            [(image, by_uid[image.sop_instance_uid]) for image in images],
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            instance_number=number,
        )
        for number, images in enumerate(by_size.values(), start=1)
    ]


def _presentation_state(
    findings: Findings,
    manifest: Manifest,
    marked: Sequence[tuple[ImageFinding, pydicom.Dataset]],
    *,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """One presentation state for images of one size."""
    layer = hd.pr.GraphicLayer(
        layer_name=_LAYER,
        order=1,
        description=f"{manifest.name} {manifest.version}"[:64],
    )
    annotations = [_annotation(image, ds, layer, findings) for image, ds in marked]
    referenced: list[pydicom.Dataset] = []
    for _, ds in marked:
        if all(ds is not other for other in referenced):
            referenced.append(ds)

    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=referenced,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer="aifi",
        manufacturer_model_name="aifi hub",
        software_versions=aifi.__version__,
        device_serial_number=manifest.id[:64],
        content_label=_content_label(manifest),
        content_description=f"{manifest.name} {manifest.version}"[:64],
        graphic_annotations=annotations,
        graphic_layers=[layer],
        contributing_equipment=[algorithm_equipment(manifest)],
        specific_character_set=RESULT_CHARACTER_SET,
        presentation_lut_transformation=_presentation_lut(referenced[0]),
        **_luts_without_functional_groups(referenced[0]),
    )
    gsps.SeriesDescription = series_description(manifest, demo_model=findings.demo_model)
    gsps.Laterality = series_laterality(referenced)
    logger.debug(
        "GSPS %s for %s %s: %d annotated images",
        gsps.SOPInstanceUID,
        manifest.id,
        manifest.version,
        len(annotations),
    )
    return gsps


def _photometric(ds: pydicom.Dataset) -> str:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()


def _presentation_lut(ds: pydicom.Dataset) -> hd.PresentationLUTTransformation:
    """INVERSE for a MONOCHROME1 image, IDENTITY otherwise (PS3.3 C.11.6.1.1)."""
    inverse = _photometric(ds) == "MONOCHROME1"
    shape = (
        hd.PresentationLUTShapeValues.INVERSE if inverse else hd.PresentationLUTShapeValues.IDENTITY
    )
    return hd.PresentationLUTTransformation(presentation_lut_shape=shape)


def _first_uid(sources: Sequence[pydicom.Dataset]) -> str:
    return str(sources[0].SOPInstanceUID)


def _content_label(manifest: Manifest) -> str:
    """Content Label (0070,0080), a CS of at most 16 characters: A-Z, 0-9, space, underscore."""
    label = "".join(c if c.isalnum() else "_" for c in manifest.id.upper())
    return label[:16] or "AIFI"


def _annotation(
    image: ImageFinding,
    source: pydicom.Dataset,
    layer: hd.pr.GraphicLayer,
    findings: Findings,
) -> hd.pr.GraphicAnnotation:
    graphics: list[hd.pr.GraphicObject] = []
    texts: list[hd.pr.TextObject] = []
    for box in image.boxes:
        graphics.extend(_graphics(box))
        texts.append(
            hd.pr.TextObject(
                text_value=_plain(f"{box.label} {box.score:.2f}"),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(min(box.x0, box.x1), min(box.y0, box.y1)),
                anchor_point_visible=False,
            )
        )
    texts.append(_display_text(findings.summary, (0.02, 0.90, 0.98, 0.98)))
    if findings.demo_model:
        texts.append(_display_text(DEMO_BANNER, (0.02, 0.02, 0.98, 0.08)))
    frames = image.frame_number if _is_multiframe(source) and image.frame_number else None
    return hd.pr.GraphicAnnotation(
        referenced_images=[source],
        graphic_layer=layer,
        referenced_frame_number=frames,
        graphic_objects=graphics or None,
        text_objects=texts,
    )


def _graphics(box: Box) -> list[hd.pr.GraphicObject]:
    """A closed rectangle, or for a location a POINT with a CIRCLE around it (PS3.3 C.10.5)."""
    pixel = hd.pr.AnnotationUnitsValues.PIXEL
    if is_point(box):
        centre = [box.x0, box.y0]
        return [
            hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POINT, np.array([centre]), pixel),
            hd.pr.GraphicObject(
                hd.pr.GraphicTypeValues.CIRCLE,
                np.array([centre, [box.x0 + _POINT_RADIUS, box.y0]]),
                pixel,
            ),
        ]
    corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1)]
    return [
        hd.pr.GraphicObject(
            hd.pr.GraphicTypeValues.POLYLINE,
            np.array([*corners, corners[0]], dtype=np.float64),
            pixel,
        )
    ]


def _display_text(text: str, bounding_box: tuple[float, float, float, float]) -> hd.pr.TextObject:
    return hd.pr.TextObject(
        text_value=_plain(text),
        units=hd.pr.AnnotationUnitsValues.DISPLAY,
        bounding_box=bounding_box,
        text_justification=hd.pr.TextJustificationValues.LEFT,
    )


def series_laterality(referenced: Sequence[pydicom.Dataset]) -> str:
    """Laterality (0020,0060) of the series, Type 2C (PS3.3 C.7.3.1): the images' own, or unknown.

    dciodvfy cannot tell whether the body part is paired, so it is always
    written; empty means unknown.
    """
    sides = {str(ds.get("Laterality") or ds.get("ImageLaterality") or "") for ds in referenced}
    return sides.pop() if len(sides) == 1 and sides <= {"R", "L"} else ""


def _plain(text: str) -> str:
    """Text for a viewer: dashes and quotes as ASCII (many viewers show only ASCII), cut to ST."""
    return plain_punctuation(text)[:_MAX_TEXT]


def _luts_without_functional_groups(ds: pydicom.Dataset) -> dict[str, Any]:
    """Modality and VOI LUT of a multi-frame image that lacks its functional groups.

    highdicom reads them from the Shared Functional Groups (PS3.3 C.7.6.16);
    an image without them gets its top-level rescale and window, else the
    identity and the full range of its stored bits.
    """
    if not _is_multiframe(ds) or "SharedFunctionalGroupsSequence" in ds:
        return {}
    bits = int(ds.get("BitsStored", 16))
    centre = ds.get("WindowCenter", 2 ** (bits - 1))
    width = ds.get("WindowWidth", 2**bits)
    return {
        "modality_lut_transformation": hd.ModalityLUTTransformation(
            rescale_intercept=float(ds.get("RescaleIntercept", 0)),
            rescale_slope=float(ds.get("RescaleSlope", 1)),
            rescale_type=str(ds.get("RescaleType", "US")),
        ),
        "voi_lut_transformations": [
            hd.pr.SoftcopyVOILUTTransformation(
                window_center=_first(centre),
                window_width=_first(width),
            )
        ],
    }


def _first(value: object) -> float:
    """The first value of a possibly multi-valued numeric attribute."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _is_multiframe(ds: pydicom.Dataset) -> bool:
    return int(ds.get("NumberOfFrames", 1) or 1) > 1
