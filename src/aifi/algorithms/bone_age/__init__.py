"""Bone age from a PA hand radiograph, with SDS against Greulich & Pyle (demo ONNX weights)."""

from aifi.algorithms.bone_age.algorithm import BoneAge, age_in_months
from aifi.algorithms.bone_age.reference import REFERENCE_CITATION, sds

__all__ = ["REFERENCE_CITATION", "BoneAge", "age_in_months", "sds"]
