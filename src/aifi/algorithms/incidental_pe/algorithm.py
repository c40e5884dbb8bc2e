"""Incidental pulmonary embolism on contrast-enhanced chest CT.

The suitable axial series is chosen (:mod:`.selection`); its slices are
ordered along the normal by Image Position (Patient), converted to
Hounsfield units with the Modality LUT, checked to contain lungs, and read
by a 2.5D model. The answer: the probability of PE, the suspected emboli
(slice SOP Instance UID and pixel column/row), and — when positive — an
urgent flag, since an unsuspected PE needs a clinician's attention today.

Coded (:mod:`aifi.algorithms.codes`): Pulmonary embolism (59282003, SCT)
with its presence Present or Absent, so a negative result is coded too; the
probability as Probability (122157, DCM); the procedure CT Chest
(24627-2, LN).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from aifi.algorithms.base import (
    AlgorithmInput,
    Box,
    Findings,
    ImageFinding,
    InputInstance,
    Manifest,
    Measurement,
    Resources,
    SelectionRule,
)
from aifi.algorithms.codes import (
    ABSENT,
    CT_CHEST,
    NO_UNITS,
    PRESENCE,
    PRESENT,
    PULMONARY_EMBOLISM,
)
from aifi.algorithms.codes import PROBABILITY as _PROBABILITY
from aifi.algorithms.incidental_pe.model import CANVAS, CELL, canvas_of, model_inputs
from aifi.algorithms.incidental_pe.selection import CHEST_BODY_PARTS, choose_series
from aifi.algorithms.onnx_model import PinnedModel, demo_note, load_model_spec
from aifi.algorithms.preprocess import (
    Geometry,
    axial_normal,
    frames_of,
    modality_values,
    pixel_spacing_mm,
    slice_position,
)
from aifi.errors import InputNotAccepted

__all__ = ["DEMO_STORE", "IncidentalPE"]

logger = logging.getLogger(__name__)

DEMO_STORE = Path(__file__).parent / "weights"
PROBABILITY = _PROBABILITY
NO_UNIT = NO_UNITS
LUNG_HU = (-950.0, -600.0)
MIN_LUNG_SLICE_FRACTION = 0.3
MAX_LOCATIONS = 5
BATCH = 4
"""Slices per model call. ONNX Runtime's activations cost about 4 MB a slice (32 a call:
255 MB peak for the run on 100 slices, 8: 135 MB; on 600 slices after the standard tables
are loaded, 8: 276 MB, 4: 255 MB, at the same CPU time); the heatmaps do not depend on it."""


def lung_coverage(hu: np.ndarray) -> float:
    """Fraction of slices where lung-density pixels make up over a tenth of the body."""
    inside = hu > LUNG_HU[0]
    lung = inside & (hu < LUNG_HU[1])
    per_slice = lung.sum(axis=(1, 2)) / np.maximum(inside.sum(axis=(1, 2)), 1)
    return float((per_slice > 0.1).mean())


class IncidentalPE:
    """Incidental PE detection on axial contrast chest CT (ONNX model, pinned)."""

    def __init__(self, model_store: Path | None = None) -> None:
        self.spec = load_model_spec(model_store or DEMO_STORE, "incidental-pe")
        self.model = PinnedModel(self.spec)
        self.model.verify()  # a mismatched model fails at start-up, not on a patient's study
        self.positive_threshold = self.spec.parameter("positive_threshold", 0.5)
        self.manifest = Manifest(
            id="incidental-pe",
            version=self.spec.version,
            name="Incidental pulmonary embolism",
            vendor=self.spec.vendor,
            intended_use=(
                "Detection of unsuspected pulmonary embolism on contrast-enhanced CT covering "
                "the chest acquired for another indication (e.g. oncology follow-up); a "
                "positive result is flagged urgent for prompt review."
            ),
            regulatory_status=self.spec.regulatory_status,
            accepts=(
                SelectionRule("Modality", any_of=("CT",)),
                SelectionRule("BodyPartExamined", any_of=CHEST_BODY_PARTS, required=False),
                SelectionRule("ContrastBolusAgent", patterns=("*?",), required=False),
                SelectionRule("SliceThickness", minimum=0.0, maximum=5.0, required=False),
            ),
            keep_attributes=(
                "SeriesDescription",
                "ContrastBolusAgent",
                "ContrastBolusRoute",
                "SliceThickness",
                "BodyPartExamined",
                "ImageOrientationPatient",
                "ImagePositionPatient",
                "PixelSpacing",
                "RescaleSlope",
                "RescaleIntercept",
                "RescaleType",
                "SliceLocation",
                "PatientPosition",
            ),
            produces=("sr", "gsps", "sc"),
            resources=Resources(device="cpu", memory_mb=1024, time_limit_s=300.0),
            model_sha256=self.spec.sha256,
        )

    def run(self, inputs: AlgorithmInput) -> Findings:
        series = choose_series(inputs)
        headers = series.headers
        normal = axial_normal(headers[0])
        order = sorted(range(len(headers)), key=lambda k: slice_position(headers[k], normal))
        uids = [series.instances[k].sop_instance_uid for k in order]
        shape = (int(headers[0].Rows), int(headers[0].Columns))
        if any((int(ds.Rows), int(ds.Columns)) != shape for ds in headers):
            raise InputNotAccepted("the slices of the CT series differ in size")
        positions = np.array([slice_position(headers[k], normal) for k in order])
        canvases, lung_slices, geometry = self._read_slices(
            [series.instances[k] for k in order], pixel_spacing_mm(headers[order[0]])
        )
        coverage = float(lung_slices.mean())
        if coverage < MIN_LUNG_SLICE_FRACTION:
            raise InputNotAccepted(
                f"the series does not cover the chest: lung tissue on {coverage:.0%} of "
                f"slices (at least {MIN_LUNG_SLICE_FRACTION:.0%} needed)"
            )
        heatmaps = np.empty((len(uids), *self._cells()), dtype=np.float32)
        for start in range(0, len(uids), BATCH):
            rows = slice(start, start + BATCH)
            (batch,) = self.model.run({"slices": model_inputs(canvases, positions, rows)})
            heatmaps[rows] = batch[:, 0]
        probability = float(heatmaps.max())
        positive = probability >= self.positive_threshold
        locations, images = self._locations(heatmaps, uids, geometry)
        logger.info("incidental-pe: %d slices, probability %.3f", len(uids), probability)
        if positive:
            first = locations[0]
            summary = (
                f"Pulmonary embolism suspected (probability {probability:.2f}); "
                f"urgent review advised; {len(locations)} suspected location(s), first at "
                f"column {first['column']:.0f}, row {first['row']:.0f}"
            )
        else:
            summary = f"No pulmonary embolism detected (probability {probability:.2f})"
        return Findings(
            summary=summary + demo_note(self.spec),
            finding=PULMONARY_EMBOLISM if positive else None,
            finding_type=PULMONARY_EMBOLISM,
            presence=PRESENT if positive else ABSENT,
            procedure=CT_CHEST,
            urgent=positive,
            measurements=(Measurement(PROBABILITY, round(probability, 3), NO_UNIT),),
            images=tuple(images) if positive else (),
            demo_model=self.spec.demo,
            details={
                "probability": round(probability, 4),
                "positive": positive,
                "threshold": self.positive_threshold,
                "locations": locations if positive else [],
                "series_instance_uid": series.series_instance_uid,
                "slices_read": len(uids),
                "lung_coverage": round(coverage, 3),
                "model": {"version": self.spec.version, "sha256": self.spec.sha256},
            },
        )

    @staticmethod
    def _cells() -> tuple[int, int]:
        """The heatmap's grid: one cell per ``CELL`` x ``CELL`` canvas pixels."""
        return (CANVAS // CELL, CANVAS // CELL)

    @staticmethod
    def _read_slices(
        instances: list[InputInstance], spacing: tuple[float, float]
    ) -> tuple[np.ndarray, np.ndarray, Geometry]:
        """Each slice, in order, read alone and brought onto the model's canvas at once.

        Returns the canvases (S, CANVAS, CANVAS) float32, whether each slice
        shows lung (:func:`lung_coverage` of that slice), and the canvas
        geometry. Only one slice's pixels (and its Hounsfield units) are held
        at a time, so memory does not grow with the acquired matrix x slices:
        a 600-slice 512 x 512 CT needs 39 MB of canvases, not 1.2 GB of HU.
        """
        canvases = np.empty((len(instances), CANVAS, CANVAS), dtype=np.float32)
        lung = np.empty(len(instances), dtype=bool)
        geometry: Geometry | None = None
        for slot, instance in enumerate(instances):
            ds = instance.read()
            plane = modality_values(ds, frames_of(ds)[0])
            del ds
            lung[slot] = lung_coverage(plane[None]) > 0
            canvases[slot], geometry = canvas_of(plane, spacing)
        if geometry is None:
            raise InputNotAccepted("the CT series has no slices")
        return canvases, lung, geometry

    def _locations(
        self, heatmaps: np.ndarray, uids: list[str], geometry: Geometry
    ) -> tuple[list[dict[str, object]], list[ImageFinding]]:
        """Up to five slices with a peak ≥ threshold, most probable first, with the peak cell."""
        per_slice = heatmaps.reshape(len(heatmaps), -1)
        best = per_slice.max(axis=1)
        ranked = [int(i) for i in np.argsort(-best) if best[i] >= self.positive_threshold]
        locations, images = [], []
        for index in ranked[:MAX_LOCATIONS]:
            cell = np.unravel_index(int(per_slice[index].argmax()), heatmaps.shape[1:])
            row_cell, col_cell = int(cell[0]), int(cell[1])
            x0, y0 = geometry.to_source(col_cell * CELL, row_cell * CELL)
            x1, y1 = geometry.to_source((col_cell + 1) * CELL, (row_cell + 1) * CELL)
            score = float(best[index])
            locations.append(
                {
                    "sop_instance_uid": uids[index],
                    "column": round((x0 + x1) / 2, 1),
                    "row": round((y0 + y1) / 2, 1),
                    "probability": round(score, 4),
                }
            )
            images.append(
                ImageFinding(
                    sop_instance_uid=uids[index],
                    evaluations=((PRESENCE, PRESENT),),
                    boxes=(
                        Box(
                            round(x0, 1),
                            round(y0, 1),
                            round(x1, 1),
                            round(y1, 1),
                            "suspected pulmonary embolus",
                            round(score, 3),
                        ),
                    ),
                )
            )
        return locations, images
