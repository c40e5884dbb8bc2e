"""The algorithm contract: a manifest plus one method.

An algorithm declares what it accepts, which attributes it needs kept during
pseudonymization (data minimisation), what it produces and what it needs to
run; then ``run(inputs) -> findings``. It knows nothing of tenants, queues,
storage, DICOM networking or DICOM encoding: the platform selects inputs
(:mod:`aifi.algorithms.selection`), turns findings into DICOM
(:mod:`aifi.results`), retries, audits and meters.

Modelled on the MONAI Deploy App SDK's declared inputs/outputs and on IHE
AI Results (AIR), which asks every result to carry the algorithm's identity
and version. Part of the contract layer: imports nothing else of aifi.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import pydicom

from aifi.core.findings import Findings

__all__ = [
    "Algorithm",
    "AlgorithmInput",
    "InputInstance",
    "Manifest",
    "PriorStudyInput",
    "Priors",
    "Resources",
    "SelectionRule",
    "instances_of",
]


@dataclass(frozen=True)
class SelectionRule:
    """One declarative condition on the DICOM attributes of a series.

    ``keyword`` is a DICOM keyword. A value matches when it equals one of
    ``any_of`` (case-insensitive), matches one of the shell-style
    ``patterns``, or lies within ``[minimum, maximum]`` for numbers. ``required``
    False means a missing attribute does not refuse the series.
    """

    keyword: str
    any_of: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    required: bool = True


@dataclass(frozen=True)
class Resources:
    """What one run needs."""

    device: Literal["cpu", "gpu"] = "cpu"
    memory_mb: int = 512
    time_limit_s: float = 300.0


@dataclass(frozen=True)
class Priors:
    """Earlier studies of the same patient an algorithm wants beside the current one.

    The edge finds them by C-FIND (PS3.4 C.6.2, Study Root) for the same
    PatientID and IssuerOfPatientID, the same modality, the same
    BodyPartExamined when ``same_body_part``, and a StudyDate within ``years``
    before the current study; at most ``max_studies``, newest first.
    """

    years: float = 2.0
    same_body_part: bool = True
    max_studies: int = 3

    def __post_init__(self) -> None:
        if self.years <= 0:
            raise ValueError(f"priors years {self.years!r} must be more than 0")
        if self.max_studies < 1:
            raise ValueError(f"priors max_studies {self.max_studies!r} must be at least 1")


@dataclass(frozen=True)
class Manifest:
    """What the catalog, the edge's router and the pseudonymizer know of an algorithm."""

    id: str
    version: str
    name: str
    vendor: str
    intended_use: str
    regulatory_status: str
    accepts: tuple[SelectionRule, ...]
    keep_attributes: tuple[str, ...] = ()
    produces: tuple[str, ...] = ("sr",)
    resources: Resources = field(default_factory=Resources)
    accepts_non_images: bool = False
    model_sha256: str | None = None
    priors: Priors | None = None

    def __post_init__(self) -> None:
        if not self.id or not self.id.replace("-", "").isalnum():
            raise ValueError(f"manifest id {self.id!r} must be letters, digits and dashes")
        if not self.version:
            raise ValueError(f"manifest {self.id!r} needs a version")


@dataclass(frozen=True)
class InputInstance:
    """One pseudonymized instance handed to an algorithm (a file the platform stored)."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str

    def read(self, *, stop_before_pixels: bool = False) -> pydicom.Dataset:
        return pydicom.dcmread(self.path, stop_before_pixels=stop_before_pixels)


@dataclass(frozen=True)
class PriorStudyInput:
    """The selected instances of one earlier study of the same patient (pseudonymized)."""

    study_instance_uid: str
    instances: tuple[InputInstance, ...]


@dataclass(frozen=True)
class AlgorithmInput:
    """The selected instances of one pseudonymized study.

    ``priors``: earlier studies of the same patient, newest first, only for an
    algorithm whose manifest asks for them (:class:`Priors`); each holds the
    instances that pass the manifest's ``accepts`` rules.
    """

    study_instance_uid: str
    instances: tuple[InputInstance, ...]
    priors: tuple[PriorStudyInput, ...] = ()


@runtime_checkable
class Algorithm(Protocol):
    """A manifest plus one method."""

    manifest: Manifest

    def run(self, inputs: AlgorithmInput) -> Findings:
        """Analyse the inputs; raise :class:`aifi.errors.InputNotAccepted` when they do not fit."""
        ...


def instances_of(inputs: AlgorithmInput) -> Sequence[InputInstance]:
    """The inputs in a stable order (series, then SOP Instance UID)."""
    return sorted(inputs.instances, key=lambda i: (i.series_instance_uid, i.sop_instance_uid))
