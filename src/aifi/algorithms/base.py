"""The algorithm contract: a manifest plus one method.

An algorithm declares what it accepts, which attributes it needs kept during
pseudonymization (data minimisation), what it produces and what it needs to
run; then ``run(inputs) -> findings``. It knows nothing of tenants, queues,
storage, DICOM networking or DICOM encoding: the platform selects inputs
(:mod:`aifi.algorithms.selection`), turns findings into DICOM
(:mod:`aifi.results`), retries, audits and meters.

Modelled on the MONAI Deploy App SDK's declared inputs/outputs and on IHE
AI Results (AIR), which asks every result to carry the algorithm's identity
and version.

The definitions live in the contract layer, :mod:`aifi.core.manifest` and
:mod:`aifi.core.findings`; this module names them for algorithm authors.
"""

from __future__ import annotations

from aifi.core.findings import Box, Code, Findings, ImageFinding, Measurement
from aifi.core.manifest import (
    Algorithm,
    AlgorithmInput,
    InputInstance,
    Manifest,
    Priors,
    PriorStudyInput,
    Resources,
    SelectionRule,
    instances_of,
)

__all__ = [
    "Algorithm",
    "AlgorithmInput",
    "Box",
    "Code",
    "Findings",
    "ImageFinding",
    "InputInstance",
    "Manifest",
    "Measurement",
    "PriorStudyInput",
    "Priors",
    "Resources",
    "SelectionRule",
    "instances_of",
]
