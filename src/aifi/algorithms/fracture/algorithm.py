"""Fracture detection on radiographs of the appendicular skeleton.

Per image: boxes around suspected fractures, each with a score. Per study:
*positive* when the highest score reaches ``positive_threshold`` (default
0.6), *doubtful* when it reaches ``doubtful_threshold`` (default 0.3),
*negative* otherwise. The thresholds live in the model manifest
(``[parameters]``) so that a vendor's calibration travels with its model;
``training/evaluate.py`` reports sensitivity and specificity at both.

Coded (:mod:`aifi.algorithms.codes`): the finding is Fracture of bone
(125605004, SCT) with its presence Present / Equivocal / Absent (doubtful
is equivocal), per study and per image; the procedure is XR Upper extremity
Views (24689-2, LN) when every image read is of the upper limb, else XR
unspecified body region (43468-8, LN).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom

from aifi.algorithms.base import (
    AlgorithmInput,
    Box,
    Code,
    Findings,
    ImageFinding,
    Manifest,
    Measurement,
    Resources,
    SelectionRule,
    instances_of,
)
from aifi.algorithms.codes import (
    ABSENT,
    EQUIVOCAL,
    FRACTURE,
    FRACTURE_SCORE,
    NO_UNITS,
    PRESENCE,
    PRESENT,
    XR_UNSPECIFIED,
    XR_UPPER_EXTREMITY,
)
from aifi.algorithms.fracture.model import canvas_for, regions
from aifi.algorithms.onnx_model import PinnedModel, demo_note, load_model_spec
from aifi.algorithms.preprocess import pixel_spacing_mm, radiograph_frames
from aifi.errors import InputNotAccepted

__all__ = ["APPENDICULAR_BODY_PARTS", "DEMO_STORE", "FractureDetection"]

logger = logging.getLogger(__name__)

DEMO_STORE = Path(__file__).parent / "weights"

# Body Part Examined defined terms (PS3.16 Annex L) of the limbs and their girdles
APPENDICULAR_BODY_PARTS = (
    "SHOULDER",
    "CLAVICLE",
    "SCAPULA",
    "ARM",
    "HUMERUS",
    "ELBOW",
    "FOREARM",
    "WRIST",
    "HAND",
    "FINGER",
    "THUMB",
    "HIP",
    "FEMUR",
    "THIGH",
    "KNEE",
    "PATELLA",
    "LEG",
    "TIBIA",
    "FIBULA",
    "ANKLE",
    "FOOT",
    "HEEL",
    "CALCANEUS",
    "TOE",
    "UPPER LIMB",
    "LOWER LIMB",
    "EXTREMITY",
)

UPPER_LIMB_BODY_PARTS = frozenset(APPENDICULAR_BODY_PARTS[: APPENDICULAR_BODY_PARTS.index("HIP")])
SCORE = FRACTURE_SCORE
NO_UNIT = NO_UNITS
PRESENCE_OF: dict[str, Code] = {"positive": PRESENT, "doubtful": EQUIVOCAL, "negative": ABSENT}
"""Presence of a fracture (CID 240, and Equivocal) for each category."""


def refusal_reason(ds: pydicom.Dataset) -> str | None:
    """Why one instance is not a radiograph this algorithm reads, or None when it is."""
    modality = str(ds.get("Modality", ""))
    if modality not in ("CR", "DX"):
        return f"modality {modality or 'missing'} is not CR or DX"
    if str(ds.get("PresentationIntentType", "FOR PRESENTATION")) != "FOR PRESENTATION":
        return "a DX image For Processing is not read; send the For Presentation image"
    part = str(ds.get("BodyPartExamined", "")).upper()
    if part not in APPENDICULAR_BODY_PARTS:
        return f"body part {part or 'missing'} is not of the appendicular skeleton"
    return None


class FractureDetection:
    """Fracture detection on CR/DX radiographs of the limbs (ONNX model, pinned)."""

    def __init__(self, model_store: Path | None = None) -> None:
        self.spec = load_model_spec(model_store or DEMO_STORE, "fracture")
        self.model = PinnedModel(self.spec)
        self.model.verify()  # a mismatched model fails at start-up, not on a patient's study
        self.positive_threshold = self.spec.parameter("positive_threshold", 0.6)
        self.doubtful_threshold = self.spec.parameter("doubtful_threshold", 0.3)
        self.manifest = Manifest(
            id="fracture",
            version=self.spec.version,
            name="Fracture detection",
            vendor=self.spec.vendor,
            intended_use=(
                "Detection of fractures on radiographs (CR/DX) of the appendicular skeleton "
                "of adults and children, as a second reader: boxes per image and a study-level "
                "positive / doubtful / negative result."
            ),
            regulatory_status=self.spec.regulatory_status,
            accepts=(
                SelectionRule("Modality", any_of=("CR", "DX")),
                SelectionRule("BodyPartExamined", any_of=APPENDICULAR_BODY_PARTS),
            ),
            keep_attributes=(
                "BodyPartExamined",
                "ViewPosition",
                "ImageLaterality",
                "Laterality",
                "PixelSpacing",
                "ImagerPixelSpacing",
                "EstimatedRadiographicMagnificationFactor",
                "CassetteSize",
                "CassetteOrientation",
                "PhotometricInterpretation",
                "RescaleSlope",
                "RescaleIntercept",
                "WindowCenter",
                "WindowWidth",
                "VOILUTSequence",
                "PresentationIntentType",
            ),
            produces=("sr", "gsps", "sc"),
            resources=Resources(device="cpu", memory_mb=512, time_limit_s=120.0),
            model_sha256=self.spec.sha256,
        )

    def run(self, inputs: AlgorithmInput) -> Findings:
        """Read every accepted radiograph; refuse when none is accepted."""
        canvases, keys, reasons = [], [], []
        body_parts: set[str] = set()
        for instance in instances_of(inputs):
            ds = instance.read()
            reason = refusal_reason(ds)
            if reason is not None:
                reasons.append(reason)
                continue
            body_parts.add(str(ds.get("BodyPartExamined", "")).upper())
            spacing = pixel_spacing_mm(ds)
            frames = radiograph_frames(ds)
            for number, unit in enumerate(frames, start=1):
                canvas, geometry = canvas_for(unit, spacing)
                canvases.append(canvas)
                keys.append(
                    (instance.sop_instance_uid, number if len(frames) > 1 else None, geometry)
                )
        if not canvases:
            raise InputNotAccepted(
                "no radiograph of the appendicular skeleton in the study: "
                + "; ".join(sorted(set(reasons)) or ["no instances"])
            )
        batch = np.stack(canvases)[:, None].astype(np.float32)
        (heatmaps,) = self.model.run({"image": batch})
        images = []
        study_score = 0.0
        for (sop_uid, frame, geometry), heatmap in zip(keys, heatmaps[:, 0], strict=True):
            score = float(heatmap.max())
            study_score = max(study_score, score)
            boxes = []
            for region in regions(heatmap, self.doubtful_threshold):
                x0, y0 = geometry.to_source(region.box[0], region.box[1])
                x1, y1 = geometry.to_source(region.box[2], region.box[3])
                boxes.append(
                    Box(
                        x0=round(x0, 1),
                        y0=round(y0, 1),
                        x1=round(x1, 1),
                        y1=round(y1, 1),
                        label="fracture",
                        score=round(region.score, 3),
                    )
                )
            images.append(
                ImageFinding(
                    sop_instance_uid=sop_uid,
                    frame_number=frame,
                    measurements=(Measurement(SCORE, round(score, 3), NO_UNIT),),
                    evaluations=((PRESENCE, PRESENCE_OF[self._category(score)]),),
                    boxes=tuple(boxes),
                )
            )
        category = self._category(study_score)
        summary = {
            "positive": "Fracture suspected",
            "doubtful": "Fracture doubtful; review advised",
            "negative": "No fracture detected",
        }[category]
        logger.info(
            "fracture: %d images, study score %.3f → %s", len(images), study_score, category
        )
        return Findings(
            summary=f"{summary} (score {study_score:.2f}){demo_note(self.spec)}",
            finding=FRACTURE if category != "negative" else None,
            finding_type=FRACTURE,
            presence=PRESENCE_OF[category],
            procedure=XR_UPPER_EXTREMITY if body_parts <= UPPER_LIMB_BODY_PARTS else XR_UNSPECIFIED,
            urgent=False,
            measurements=(Measurement(SCORE, round(study_score, 3), NO_UNIT),),
            images=tuple(images),
            demo_model=self.spec.demo,
            details={
                "category": category,
                "score": round(study_score, 4),
                "thresholds": {
                    "positive": self.positive_threshold,
                    "doubtful": self.doubtful_threshold,
                },
                "images_read": len(images),
                "instances_skipped": reasons,
                "model": {"version": self.spec.version, "sha256": self.spec.sha256},
            },
        )

    def _category(self, score: float) -> str:
        if score >= self.positive_threshold:
            return "positive"
        if score >= self.doubtful_threshold:
            return "doubtful"
        return "negative"
