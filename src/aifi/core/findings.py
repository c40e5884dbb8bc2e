"""Findings: what an algorithm answers, per study and per image.

The words of the algorithm contract (:mod:`aifi.core.manifest`) that the
platform turns into DICOM (:mod:`aifi.results`) and JSON
(:mod:`aifi.algorithms.findings_json`). Part of the contract layer: imports
nothing else of aifi.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Box", "Code", "Findings", "ImageFinding", "Measurement"]


@dataclass(frozen=True)
class Code:
    """A coded concept (value, scheme designator, meaning), e.g. SNOMED CT or DCM."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class Measurement:
    """A numeric finding with a UCUM unit (TID 300 style)."""

    concept: Code
    value: float
    unit: Code


@dataclass(frozen=True)
class Box:
    """A rectangle on one image, in pixel coordinates (column, row), with a score."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str
    score: float


@dataclass(frozen=True)
class ImageFinding:
    """What an algorithm found on one source image."""

    sop_instance_uid: str
    measurements: tuple[Measurement, ...] = ()
    texts: tuple[tuple[Code, str], ...] = ()
    boxes: tuple[Box, ...] = ()
    frame_number: int | None = None
    evaluations: tuple[tuple[Code, Code], ...] = ()
    """Coded qualitative evaluations (name, value) of this image, e.g. presence: absent."""


@dataclass(frozen=True)
class Findings:
    """The whole answer of one run: per study and per image.

    ``finding`` is the coded positive finding (None when nothing was found).
    ``finding_type`` is what the algorithm looks for whatever the answer
    (the "Finding" of every TID 1501 measurement group), ``presence`` its
    answer (CID 240: present, absent; or equivocal), so that a negative
    result is coded too. ``evaluations`` are further coded study-level
    answers (name, value), ``procedure`` the imaging procedure the result
    reports on (TID 1500 Procedure Reported).
    """

    summary: str
    finding: Code | None = None
    urgent: bool = False
    measurements: tuple[Measurement, ...] = ()
    images: tuple[ImageFinding, ...] = ()
    demo_model: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    finding_type: Code | None = None
    presence: Code | None = None
    evaluations: tuple[tuple[Code, Code], ...] = ()
    procedure: Code | None = None
