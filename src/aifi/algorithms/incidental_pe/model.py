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
    "canvas_of",
    "model_inputs",
]

TARGET_MM = 2.5
CANVAS = 128
CELL = 8
Z_STEP_MM = 5.0
WINDOW = (100.0, 700.0)


def canvas_of(plane: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, Geometry]:
    """Window one slice (rows, cols) of Hounsfield units and resample it onto the model's canvas.

    The slice is brought down to the model's grid (``TARGET_MM`` per pixel,
    ``CANVAS`` x ``CANVAS``, float32) as soon as it is read, so a study is
    never held at its acquired resolution.
    """
    return to_canvas(window(plane, *WINDOW), spacing, TARGET_MM, CANVAS)


def model_inputs(
    canvases: np.ndarray, positions: np.ndarray, rows: slice = slice(None)
) -> np.ndarray:
    """(S, 3, H, W): each slice with the planes ``Z_STEP_MM`` below and above it.

    ``positions`` are the slice positions along the normal, ascending.
    ``rows`` picks the slices to build (all by default), so a long series
    is fed to the model a batch at a time; the neighbouring planes still
    come from the whole series.
    """
    index = np.arange(len(positions), dtype=np.float64)
    centre = positions[rows]

    def plane_at(z: np.ndarray) -> np.ndarray:
        frac = np.interp(z, positions, index)
        lo = np.floor(frac).astype(int)
        hi = np.minimum(lo + 1, len(positions) - 1)
        w = (frac - lo)[:, None, None]
        return (1 - w) * canvases[lo] + w * canvases[hi]

    below = plane_at(centre - Z_STEP_MM)
    above = plane_at(centre + Z_STEP_MM)
    return np.stack([below, canvases[rows], above], axis=1).astype(np.float32)
