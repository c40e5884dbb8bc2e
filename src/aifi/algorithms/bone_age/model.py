"""The bone-age model's input and output.

Inputs: ``image`` (N, 1, 128, 128) float32, the PA hand radiograph at 2.0 mm
per pixel (dense bright, [0, 1], a left hand: right hands are mirrored)
centred on the canvas; ``sex`` (N, 1) float32, 1.0 male and 0.0 female.
Output ``bone_age_months`` (N, 1). Keeping a fixed physical pixel size
matters: hand size is part of what the model reads.
"""

from __future__ import annotations

import numpy as np

from aifi.algorithms.preprocess import Geometry, to_canvas

__all__ = ["CANVAS", "TARGET_MM", "canvas_for"]

TARGET_MM = 2.0
CANVAS = 128


def canvas_for(
    unit: np.ndarray, spacing: tuple[float, float], *, mirror: bool = False
) -> tuple[np.ndarray, Geometry]:
    """The model's input canvas for a hand radiograph frame in [0, 1]."""
    if mirror:
        unit = unit[:, ::-1]
    return to_canvas(unit, spacing, TARGET_MM, CANVAS)
