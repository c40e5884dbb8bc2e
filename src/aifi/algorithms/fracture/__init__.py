"""Fracture detection on radiographs of the appendicular skeleton (demo ONNX weights)."""

from aifi.algorithms.fracture.algorithm import APPENDICULAR_BODY_PARTS, FractureDetection

__all__ = ["APPENDICULAR_BODY_PARTS", "FractureDetection"]
