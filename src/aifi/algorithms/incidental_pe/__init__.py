"""Incidental pulmonary embolism on contrast chest CT (demo ONNX weights)."""

from aifi.algorithms.incidental_pe.algorithm import IncidentalPE

__all__ = ["IncidentalPE"]
