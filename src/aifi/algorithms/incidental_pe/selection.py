"""Choosing the CT series on which incidental pulmonary embolism can be assessed.

A suitable series is single-frame CT Image Storage, axial (the slice normal
from Image Orientation (Patient), PS3.3 C.7.6.2.1.1, within 15° of the
patient's z axis), acquired with contrast (Contrast/Bolus Agent (0018,0010)
present, PS3.3 C.7.6.4, or a description that says so), of the chest
(Body Part Examined, when present, names the chest), with slices no thicker
than 5 mm and at least 16 of them. Among suitable series the thinnest, then
the longest, wins. The lungs themselves are checked on the pixels later
(:func:`aifi.algorithms.incidental_pe.algorithm.IncidentalPE.run`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pydicom

from aifi.algorithms.base import AlgorithmInput, InputInstance
from aifi.algorithms.preprocess import axial_normal
from aifi.errors import InputNotAccepted

__all__ = ["CHEST_BODY_PARTS", "CandidateSeries", "choose_series"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CHEST_BODY_PARTS = (
    "CHEST",
    "THORAX",
    "LUNG",
    "CHESTABDOMEN",
    "CHESTABDPELVIS",
    "CHEST_ABDOMEN",
    "CHEST_TO_PELVIS",
    "TORSO",
    "TRUNK",
    "WHOLEBODY",
    "NECKCHESTABDPELV",
    "HEADNECKCHEST",
)
_CONTRAST_WORDS = ("C+", "CONTRAST", "CTA", "ANGIO", "PORTAL", "ARTERIAL", "VENOUS", "KM", "IV")
MAX_SLICE_THICKNESS_MM = 5.0
MIN_SLICES = 16


@dataclass(frozen=True)
class CandidateSeries:
    """A series that passed the header checks, with its instances and headers."""

    series_instance_uid: str
    instances: tuple[InputInstance, ...]
    headers: tuple[pydicom.Dataset, ...]
    slice_thickness: float


def _has_contrast(ds: pydicom.Dataset) -> bool:
    if str(ds.get("ContrastBolusAgent", "")).strip():
        return True
    words = str(ds.get("SeriesDescription", "")).upper().replace("/", " ").split()
    return any(word in _CONTRAST_WORDS for word in words)


def _series_refusal(headers: list[pydicom.Dataset]) -> str | None:
    first = headers[0]
    modality = str(first.get("Modality", ""))
    if modality != "CT":
        return f"modality {modality or 'missing'} is not CT"
    if str(first.SOPClassUID) != CT_IMAGE_STORAGE:
        return "only single-frame CT Image Storage is read (not enhanced multi-frame CT)"
    if abs(float(axial_normal(first)[2])) < np.cos(np.deg2rad(15)):
        return "the series is not axial (Image Orientation (Patient))"
    part = str(first.get("BodyPartExamined", "")).upper()
    if part and part not in CHEST_BODY_PARTS:
        return f"body part {part} does not cover the chest"
    if not _has_contrast(first):
        return (
            "no contrast: Contrast/Bolus Agent (0018,0010) is absent and the description "
            "does not mention contrast; pulmonary embolism cannot be assessed without it"
        )
    thickness = float(first.get("SliceThickness", 0) or 0)
    if thickness > MAX_SLICE_THICKNESS_MM:
        return f"slices are {thickness:g} mm thick (at most {MAX_SLICE_THICKNESS_MM:g} mm)"
    if len(headers) < MIN_SLICES:
        return f"only {len(headers)} slices (at least {MIN_SLICES} are needed)"
    return None


def choose_series(inputs: AlgorithmInput) -> CandidateSeries:
    """The best suitable axial contrast chest CT series, or the reasons none is."""
    by_series: dict[str, list[InputInstance]] = defaultdict(list)
    for instance in inputs.instances:
        by_series[instance.series_instance_uid].append(instance)
    candidates, reasons = [], []
    for series_uid, instances in sorted(by_series.items()):
        headers = [i.read(stop_before_pixels=True) for i in instances]
        reason = _series_refusal(headers)
        if reason is not None:
            reasons.append(reason)
            continue
        candidates.append(
            CandidateSeries(
                series_instance_uid=series_uid,
                instances=tuple(instances),
                headers=tuple(headers),
                slice_thickness=float(headers[0].get("SliceThickness", 0) or 0),
            )
        )
    if not candidates:
        raise InputNotAccepted(
            "no axial contrast-enhanced CT series of the chest in the study: "
            + "; ".join(sorted(set(reasons)) or ["no instances"])
        )
    return min(candidates, key=lambda c: (c.slice_thickness or 99.0, -len(c.instances)))
