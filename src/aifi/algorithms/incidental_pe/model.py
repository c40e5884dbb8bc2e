"""The incidental-PE model's input and output (2.5D: three planes per slice).

Input ``slices`` (N, 3, 128, 128) float32: for each axial slice, the planes
5 mm below, at, and 5 mm above it (linear interpolation between slices
along the normal), in-plane at 2.5 mm per pixel, windowed at centre 100 HU,
width 700 HU (a CT pulmonary angiography window) to [0, 1]. Output
``heatmap`` (N, 1, 16, 16): the probability of a filling defect in a
pulmonary artery within each 8x8-pixel cell (20 mm x 20 mm).
"""

from __future__ import annotations

import numpy as np

from aifi.algorithms.preprocess import Geometry, to_canvas, window

__all__ = [
    "CANVAS",
    "CELL",
    "TARGET_MM",
    "WINDOW",
    "Z_STEP_MM",
    "canvases_for",
    "model_inputs",
]

TARGET_MM = 2.5
CANVAS = 128
CELL = 8
Z_STEP_MM = 5.0
WINDOW = (100.0, 700.0)


def canvases_for(hu: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, Geometry]:
    """Window and resample each slice of ``hu`` (S, rows, cols) onto the model's canvas."""
    out = []
    geometry = None
    for plane in hu:
        canvas, geometry = to_canvas(window(plane, *WINDOW), spacing, TARGET_MM, CANVAS)
        out.append(canvas)
    if geometry is None:
        raise ValueError("no slices")
    return np.stack(out), geometry


def model_inputs(canvases: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(S, 3, H, W): each slice with the planes ``Z_STEP_MM`` below and above it.

    ``positions`` are the slice positions along the normal, ascending.
    """
    index = np.arange(len(positions), dtype=np.float64)

    def plane_at(z: np.ndarray) -> np.ndarray:
        frac = np.interp(z, positions, index)
        lo = np.floor(frac).astype(int)
        hi = np.minimum(lo + 1, len(positions) - 1)
        w = (frac - lo)[:, None, None]
        return (1 - w) * canvases[lo] + w * canvases[hi]

    below = plane_at(positions - Z_STEP_MM)
    above = plane_at(positions + Z_STEP_MM)
    return np.stack([below, canvases, above], axis=1).astype(np.float32)
