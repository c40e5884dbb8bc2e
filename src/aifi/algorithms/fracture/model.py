"""The fracture model's input and output: a radiograph canvas in, a fracture heatmap out.

Input ``image``: (N, 1, 160, 160) float32, the radiograph at 1.5 mm per pixel
(dense bright, [0, 1]) centred on the canvas. Output ``heatmap``:
(N, 1, 20, 20), the probability that a fracture line crosses each 8x8-pixel
cell (12 mm x 12 mm). Training (``training/train_fracture.py``) and
inference both go through :func:`canvas_for`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aifi.algorithms.preprocess import Geometry, to_canvas

__all__ = ["CANVAS", "CELL", "TARGET_MM", "Region", "canvas_for", "regions"]

TARGET_MM = 1.5
CANVAS = 160
CELL = 8


def canvas_for(unit: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, Geometry]:
    """The model's input canvas for one radiograph frame in [0, 1], and its geometry."""
    return to_canvas(unit, spacing, TARGET_MM, CANVAS)


@dataclass(frozen=True)
class Region:
    """Connected cells above a threshold: canvas box (x0, y0, x1, y1) and peak probability."""

    box: tuple[float, float, float, float]
    score: float


def regions(heatmap: np.ndarray, threshold: float) -> list[Region]:
    """Connected groups (4-neighbourhood) of heatmap cells ≥ ``threshold``, highest first."""
    above = heatmap >= threshold
    seen = np.zeros_like(above)
    out = []
    rows, cols = heatmap.shape
    for r0, c0 in zip(*np.nonzero(above), strict=True):
        if seen[r0, c0]:
            continue
        stack, cells = [(int(r0), int(c0))], []
        seen[r0, c0] = True
        while stack:
            r, c = stack.pop()
            cells.append((r, c))
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < rows and 0 <= nc < cols and above[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    stack.append((nr, nc))
        rs = [r for r, _ in cells]
        cs = [c for _, c in cells]
        box = (min(cs) * CELL, min(rs) * CELL, (max(cs) + 1) * CELL, (max(rs) + 1) * CELL)
        out.append(
            Region(
                box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                score=float(max(heatmap[r, c] for r, c in cells)),
            )
        )
    return sorted(out, key=lambda region: -region.score)
