"""Algorithms as plug-ins: a manifest plus one method (see :mod:`aifi.algorithms.base`).

The platform selects each algorithm's inputs (:func:`select_inputs`) and
finds algorithms by id in the registry (:func:`get`, :func:`available`,
:func:`manifests`); algorithm modules are imported only when first asked for.
"""

from aifi.algorithms.base import (
    Algorithm,
    AlgorithmInput,
    Box,
    Code,
    Findings,
    ImageFinding,
    InputInstance,
    Manifest,
    Measurement,
    Resources,
    SelectionRule,
)
from aifi.algorithms.registry import available, get, manifests
from aifi.algorithms.selection import is_image_sop_class, select_inputs, series_matches

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
    "Resources",
    "SelectionRule",
    "available",
    "get",
    "is_image_sop_class",
    "manifests",
    "select_inputs",
    "series_matches",
]
