"""Findings as a DICOM Comprehensive 3D SR holding a TID 1500 Measurement Report.

The structure follows IHE AI Results (AIR) and PS3.16:

* TID 1500 Measurement Report, Procedure Reported = the procedure the
  algorithm says it reports on (e.g. CT Chest), else "Imaging procedure";
* TID 1001 Observation Context with a device observer (TID 1004): Device
  Observer UID derived from the algorithm id and version, name, manufacturer
  = the algorithm's vendor, model name = the algorithm's id;
* TID 1600 Image Library describing the source images of measurements,
  evaluations and regions (TID 1601: images "used as the source of
  measurements"; its descriptors, e.g. pixel spacing and position, are what
  a reader needs to interpret them), so the report grows with its findings,
  not with the study: an image referenced for a text alone (a pixel digest)
  is not described, and a report without such images has no library (TID
  1500 row 5 is a user option). Every source is in the Current Requested
  Procedure Evidence Sequence (PS3.3 C.17.2.3), one small item per
  instance (:func:`_library`);
* every measurement group carries the coded "Finding" (121071, DCM) the
  algorithm looks for (``Findings.finding_type``, e.g. Pulmonary embolism),
  whether it was found or not;
* per image with findings, a TID 1501 measurement group referencing its
  source image (SOP Class/Instance UID, frame), carrying TID 4019 Algorithm
  Identification, the measurements (TID 300, UCUM units), the coded
  qualitative evaluations (e.g. Presence of property = Absent) and the text
  findings as TEXT content items (e.g. the pixel data digest,
  :data:`aifi.results.codes.PIXEL_DATA_SHA256`);
* per box, a TID 1410 planar ROI group whose region is a closed POLYLINE
  SCOORD rectangle on the source image, with the score as "Probability" and
  the label in its tracking identifier; a box of zero size (x0 = x1, y0 = y1)
  is a location, e.g. of a suspected embolus, and becomes a POINT SCOORD
  (:func:`is_point`);
* study-level measurements and the study's presence in one more TID 1501
  group without source image;
* the coded headline finding (the positive finding, else the finding type)
  with its presence as a HAS PROPERTIES child, so a negative result is coded
  too, the study-level coded evaluations, the summary and, for a demo model,
  the notice "demo model - not for clinical use", in the report's
  "Qualitative Evaluations" container (TID 1500 row 12, (C0034375, UMLS)).

The SR joins the source study: Patient and General Study Module attributes
are copied from the (pseudonymized) sources, with a new Series and SOP
Instance UID, written in UTF-8 whatever the sources' character set
(:mod:`aifi.results.sources`). The Contributing Equipment Sequence (0018,A001) names the
algorithm, its vendor and version with purpose (109102, DCM, "Processing
Equipment"), after the acquisition equipment and highdicom that highdicom
itself records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import aifi
from aifi.core.codes import IMAGING_PROCEDURE, PRESENCE
from aifi.core.findings import Box, Code, Findings, ImageFinding, Measurement
from aifi.core.manifest import Manifest
from aifi.results.codes import AIFI_CODING_SCHEME, AIFI_SCHEME, DEMO_MODEL_NOTICE
from aifi.results.sources import RESULT_CHARACTER_SET, check_sources, source_header

__all__ = [
    "DEMO_NOTICE",
    "SR_SERIES_NUMBER",
    "algorithm_equipment",
    "build_sr",
    "is_point",
    "series_description",
]

logger = logging.getLogger(__name__)

DEMO_NOTICE = "demo model - not for clinical use"
SR_SERIES_NUMBER = 9901
"""Default Series Number of a result SR; the hub gives each its own (:func:`series_numbers`)."""

_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_UNDESCRIBABLE = (AttributeError, KeyError, IndexError, TypeError, ValueError)
"""What highdicom raises for a source it cannot describe in the TID 1600 Image Library."""


def build_sr(
    findings: Findings,
    manifest: Manifest,
    sources: Sequence[pydicom.Dataset],
    *,
    series_number: int = SR_SERIES_NUMBER,
    instance_number: int = 1,
    prior_sources: Sequence[pydicom.Dataset] = (),
) -> pydicom.Dataset:
    """Encode ``findings`` of ``manifest``'s algorithm on ``sources`` as one SR.

    ``sources`` are the (pseudonymized) images the algorithm ran on, all of
    one study; headers without pixel data suffice. Raises ``ValueError`` when
    they are empty, span several studies, or do not contain an image a
    finding refers to. ``prior_sources`` are images of earlier studies of the
    same patient the algorithm compared with: they are listed in the Pertinent
    Other Evidence Sequence (0040,A385), PS3.3 C.17.2.3, beside the current
    study's Current Requested Procedure Evidence Sequence.
    """
    sources = [source_header(ds) for ds in sources]
    by_uid = check_sources(sources)
    others = [
        source_header(ds)
        for ds in prior_sources
        if ds.StudyInstanceUID != sources[0].StudyInstanceUID
    ]
    finding_type = _finding_type(findings)
    algorithm_id = hd.sr.AlgorithmIdentification(name=manifest.name, version=manifest.version)

    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = []
    for number, image in enumerate(findings.images, start=1):
        if image.sop_instance_uid not in by_uid:
            raise ValueError(
                f"findings refer to instance {image.sop_instance_uid}, which is not in sources"
            )
        source = by_uid[image.sop_instance_uid]
        groups.append(_image_group(image, source, number, algorithm_id, finding_type))
        groups.extend(
            _box_group(box, image, source, f"{number}.{index}", algorithm_id, finding_type)
            for index, box in enumerate(image.boxes, start=1)
        )
    if findings.measurements or findings.presence is not None or not groups:
        # highdicom (like TID 1500's Imaging Measurements) wants at least one group
        groups.append(_study_group(findings, algorithm_id, finding_type))

    procedure = findings.procedure or IMAGING_PROCEDURE
    library = _library(findings, by_uid)
    report = _measurement_report(manifest, _coded(procedure), groups, library)
    report[0].ContentSequence.append(_qualitative_evaluations(findings))

    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, *others],  # highdicom files other studies' as other evidence
        content=_container_only(report[0]),  # the tree is attached below: _with_content
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer="aifi",
        manufacturer_model_name="aifi hub",
        software_versions=aifi.__version__,
        series_description=series_description(manifest, demo_model=findings.demo_model),
        is_complete=True,
        is_final=True,
        contributing_equipment=[algorithm_equipment(manifest)],
        coding_schemes=[AIFI_CODING_SCHEME] if _uses_aifi_codes(findings) else None,
        specific_character_set=RESULT_CHARACTER_SET,
    )
    logger.debug(
        "SR %s for %s %s: %d measurement groups",
        sr.SOPInstanceUID,
        manifest.id,
        manifest.version,
        len(groups),
    )
    return _with_content(sr, report[0])


def _measurement_report(
    manifest: Manifest,
    procedure: hd.sr.CodedConcept,
    groups: Sequence[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ],
    sources: Sequence[pydicom.Dataset],
) -> hd.sr.MeasurementReport:
    """TID 1500 with ``sources`` in its Image Library, else with those highdicom can describe.

    ``sources`` are the images :func:`_library` picks (none: no Image
    Library). The usual case (every source describable) describes each
    source once; only when highdicom refuses one are they tried one by one
    (:func:`_describable`).
    """
    context = _observation_context(manifest)
    try:
        return hd.sr.MeasurementReport(
            observation_context=context,
            procedure_reported=procedure,
            imaging_measurements=groups,
            referenced_images=sources or None,
        )
    except _UNDESCRIBABLE:
        return hd.sr.MeasurementReport(
            observation_context=context,
            procedure_reported=procedure,
            imaging_measurements=groups,
            referenced_images=_describable(sources) or None,
        )


def _container_only(root: pydicom.Dataset) -> pydicom.Dataset:
    """The report's root CONTAINER item with an empty Content Sequence (a shallow copy)."""
    container = pydicom.Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            container.add(element)
    container.ContentSequence = pydicom.Sequence()
    return container


def _with_content(sr: hd.sr.Comprehensive3DSR, root: pydicom.Dataset) -> pydicom.Dataset:
    """The document highdicom made around the root container, with the root's content tree.

    highdicom's SR constructor deep-copies the content tree it is given and
    parses the copy back into content items (for its ``content`` property),
    then searches it for references; for the few hundred items of a report
    that was half of the hub's CPU per result (bench/README.md). So the
    document (SR Document General and Patient/Study modules, evidence from
    the sources, Contributing Equipment) is made around the root container
    alone, and the tree, built and checked by highdicom's TID 1500 template
    classes, is attached here unchanged. Every content item reference points
    into ``sources`` (checked in :func:`build_sr`), so the evidence highdicom
    listed is the evidence the tree references. The result is a plain data
    set (read it back with ``highdicom.sr.srread`` for content items).
    """
    ds = pydicom.Dataset()
    ds.file_meta = sr.file_meta
    for element in sr:
        ds.add(element)
    ds.ContentSequence = root.ContentSequence
    return ds


def series_description(manifest: Manifest, *, demo_model: bool) -> str:
    """Series Description (LO, at most 64 characters) naming the algorithm and version."""
    suffix = f" - {DEMO_NOTICE}" if demo_model else ""
    name = f"{manifest.name} {manifest.version}"
    return name[: 64 - len(suffix)] + suffix


def is_point(box: Box) -> bool:
    """True when ``box`` has no extent: a location rather than a region."""
    return box.x0 == box.x1 and box.y0 == box.y1


def _coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def _finding_type(findings: Findings) -> hd.sr.CodedConcept | None:
    """The "Finding" of every measurement group: what was looked for, else what was found."""
    code = findings.finding_type or findings.finding
    return None if code is None else _coded(code)


def _evaluations(pairs: Sequence[tuple[Code, Code]]) -> list[hd.sr.QualitativeEvaluation] | None:
    return [
        hd.sr.QualitativeEvaluation(_coded(name), _coded(value)) for name, value in pairs
    ] or None


def _text(code: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=_coded(code), value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _measurement(
    measurement: Measurement, algorithm_id: hd.sr.AlgorithmIdentification
) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=_coded(measurement.concept),
        value=measurement.value,
        unit=_coded(measurement.unit),
        algorithm_id=algorithm_id,
    )


def _tracking(identifier: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=identifier)


def _frames(image: ImageFinding) -> list[int] | None:
    return None if image.frame_number is None else [image.frame_number]


def _image_group(
    image: ImageFinding,
    source: pydicom.Dataset,
    number: int,
    algorithm_id: hd.sr.AlgorithmIdentification,
    finding_type: hd.sr.CodedConcept | None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for one source image: finding, measurements, evaluations, texts."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(f"image {number}"),
        finding_type=finding_type,
        algorithm_id=algorithm_id,
        measurements=[_measurement(m, algorithm_id) for m in image.measurements] or None,
        qualitative_evaluations=_evaluations(image.evaluations),
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
                referenced_frame_numbers=_frames(image),
            )
        ],
    )
    group[0].ContentSequence.extend(_text(code, value) for code, value in image.texts)
    return group


def _box_group(
    box: Box,
    image: ImageFinding,
    source: pydicom.Dataset,
    identifier: str,
    algorithm_id: hd.sr.AlgorithmIdentification,
    finding_type: hd.sr.CodedConcept | None,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 group: a closed POLYLINE rectangle or a POINT (PS3.3 C.18.6.1.2), score, label.

    The label names the group (Tracking Identifier, at most 64 characters);
    the coded finding is the study's finding type.
    """
    corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1)]
    if is_point(box):
        graphic_type = hd.sr.GraphicTypeValues.POINT
        graphic_data = np.array([[box.x0, box.y0]], dtype=np.float64)
    else:
        graphic_type = hd.sr.GraphicTypeValues.POLYLINE
        graphic_data = np.array([*corners, corners[0]], dtype=np.float64)
    region = hd.sr.ImageRegion(
        graphic_type=graphic_type,
        graphic_data=graphic_data,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=_frames(image),
        ),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(f"{box.label[:48]} {identifier}"),
        referenced_region=region,
        finding_type=finding_type,
        algorithm_id=algorithm_id,
        measurements=[
            hd.sr.Measurement(
                name=codes.DCM.Probability,
                value=box.score,
                unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm_id,
            )
        ],
    )


def _study_group(
    findings: Findings,
    algorithm_id: hd.sr.AlgorithmIdentification,
    finding_type: hd.sr.CodedConcept | None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for the study (no single source image): measurements, presence."""
    pairs = [] if findings.presence is None else [(PRESENCE, findings.presence)]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking("study"),
        finding_type=finding_type,
        algorithm_id=algorithm_id,
        measurements=[_measurement(m, algorithm_id) for m in findings.measurements] or None,
        qualitative_evaluations=_evaluations(pairs),
    )


def _qualitative_evaluations(findings: Findings) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": the finding and its presence, the summary, the notice."""
    container = hd.sr.ContainerContentItem(
        name=_QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    items: list[hd.sr.ContentItem] = []
    headline = findings.finding or findings.finding_type
    if headline is not None:
        finding = hd.sr.CodeContentItem(
            name=codes.DCM.Finding,
            value=_coded(headline),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        if findings.presence is not None:
            finding.ContentSequence = pydicom.Sequence(
                [
                    hd.sr.CodeContentItem(
                        name=_coded(PRESENCE),
                        value=_coded(findings.presence),
                        relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
                    )
                ]
            )
        items.append(finding)
    items.extend(
        hd.sr.CodeContentItem(
            name=_coded(name),
            value=_coded(value),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        for name, value in findings.evaluations
    )
    items.append(_text(Code("121111", "DCM", "Summary"), findings.summary))
    if findings.demo_model:
        items.append(_text(DEMO_MODEL_NOTICE, DEMO_NOTICE))
    container.ContentSequence = pydicom.Sequence(items)
    return container


def _observation_context(manifest: Manifest) -> hd.sr.ObservationContext:
    """TID 1001 with a TID 1004 device observer: the algorithm itself."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["aifi algorithm", manifest.id, manifest.version]),
        name=f"{manifest.name} {manifest.version}",
        manufacturer_name=manifest.vendor,
        model_name=manifest.id,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def algorithm_equipment(manifest: Manifest) -> hd.ContributingEquipment:
    """Contributing Equipment item (PS3.3 C.12.1.1.5) naming the algorithm and version."""
    return hd.ContributingEquipment(
        manufacturer=manifest.vendor,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=manifest.id,
        software_versions=manifest.version,
        contribution_description=f"{manifest.name} {manifest.version}"[:64],
    )


def _library(findings: Findings, by_uid: dict[str, pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The sources the TID 1600 Image Library describes: those measured, evaluated or marked.

    Once each, in the order of the findings. A 600-slice CT described whole
    was 124 000 of the 126 500 data elements of a one-finding report, which
    every reader (the edge re-identifying it, the PACS) parses (issue 12).
    """
    uids = {
        image.sop_instance_uid: None
        for image in findings.images
        if image.measurements or image.evaluations or image.boxes
    }
    return [by_uid[uid] for uid in uids]


def _describable(sources: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The sources highdicom can list in the TID 1600 Image Library (optional content).

    highdicom describes cross-sectional images from top-level attributes
    (Pixel Spacing, Image Position, ...); multi-frame images that keep them in
    functional groups are left out of the library, not out of the report.
    """
    describable: list[pydicom.Dataset] = []
    for ds in sources:
        try:
            hd.sr.ImageLibraryEntryDescriptors(ds)
        except _UNDESCRIBABLE as exc:
            logger.debug("image library leaves out %s: %s", ds.SOPInstanceUID, exc)
        else:
            describable.append(ds)
    return describable


def _uses_aifi_codes(findings: Findings) -> bool:
    used: list[Code] = [code for image in findings.images for code, _ in image.texts]
    used += [m.concept for image in findings.images for m in image.measurements]
    used += [m.concept for m in findings.measurements]
    used += [code for image in findings.images for pair in image.evaluations for code in pair]
    used += [code for pair in findings.evaluations for code in pair]
    optional = (findings.finding, findings.finding_type, findings.presence, findings.procedure)
    used += [code for code in optional if code is not None]
    return findings.demo_model or any(code.scheme == AIFI_SCHEME for code in used)
