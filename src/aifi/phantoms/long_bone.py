"""Radiographs of long bones of the limbs, with or without a fracture.

The phantom projects tubular bones (a cortical shell around a less dense
medullary canal, flaring towards the ends) inside a soft-tissue limb. A
fracture is what a reader looks for: a lucent line crossing the whole bone,
transverse or oblique, with or without displacement of the distal fragment.
Negatives carry mimics: nutrient canals (short lucent lines through one
cortex only) and skin folds crossing the soft tissue.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from aifi.phantoms.dicom import StudyContext
from aifi.phantoms.radiograph import Radiograph, radiograph_dataset, to_stored

__all__ = ["BODY_PARTS", "fracture_study", "long_bone_radiograph"]

# body part → (bone radii in mm, soft-tissue half width in mm)
BODY_PARTS: dict[str, tuple[tuple[float, ...], float]] = {
    "FOREARM": ((8.0, 6.5), 32.0),
    "LEG": ((12.0, 6.0), 45.0),
    "ARM": ((11.0,), 40.0),
    "FEMUR": ((14.0,), 60.0),
}


def _smooth(img: np.ndarray) -> np.ndarray:
    """3x3 box blur (the detector's blur), edges replicated."""
    padded = np.pad(img, 1, mode="edge")
    rows, cols = img.shape
    out = np.zeros_like(img, dtype=np.float64)
    for i in range(3):
        for j in range(3):
            out += padded[i : i + rows, j : j + cols]
    return out / 9.0


def _tube(v: np.ndarray, u: np.ndarray, radius: float, length: float) -> np.ndarray:
    """Projected bone thickness (mm-equivalent) of a flared cortical tube of ``length``."""
    half = length / 2
    flare = 1.0 + 0.45 * np.clip((np.abs(u) - (half - 25.0)) / 25.0, 0.0, 1.0) ** 2
    outer = radius * flare
    inner = outer * np.where(np.abs(u) > half - 18.0, 0.85, 0.62)
    chord_outer = 2 * np.sqrt(np.clip(outer**2 - v**2, 0.0, None))
    chord_inner = 2 * np.sqrt(np.clip(inner**2 - v**2, 0.0, None))
    shell = chord_outer - 0.8 * chord_inner
    return np.where(np.abs(u) <= half, shell, 0.0)


def long_bone_radiograph(
    rng: np.random.Generator,
    *,
    fracture: bool,
    body_part: str = "FOREARM",
    spacing_mm: float | None = None,
) -> Radiograph:
    """One radiograph of ``body_part``; with ``fracture`` one bone carries a fracture line.

    The ground truth box (pixel columns/rows) surrounds the fracture line.
    """
    if body_part not in BODY_PARTS:
        raise ValueError(f"body_part must be one of {sorted(BODY_PARTS)}, not {body_part!r}")
    radii, soft_half = BODY_PARTS[body_part]
    spacing = spacing_mm or float(rng.uniform(0.3, 0.5))
    height_mm, width_mm = rng.uniform(200, 250), rng.uniform(160, 210)
    rows, cols = int(height_mm / spacing), int(width_mm / spacing)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64) * spacing
    cx = width_mm / 2 + rng.uniform(-15, 15)
    cy = height_mm / 2 + rng.uniform(-10, 10)
    angle = np.deg2rad(rng.uniform(-20, 20))
    # u along the limb (downwards when angle is 0), v across it
    u = (x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    v = (x - cx) * np.cos(angle) - (y - cy) * np.sin(angle)
    scale = rng.uniform(0.85, 1.15)
    soft = 2 * np.sqrt(np.clip((soft_half * scale) ** 2 - v**2, 0.0, None))
    bone = np.zeros_like(soft)
    length = height_mm * 1.6
    offsets = [0.0] if len(radii) == 1 else [-radii[0] * 1.3 * scale, radii[1] * 1.6 * scale]
    fractured = int(rng.integers(len(radii))) if fracture else -1
    boxes: list[tuple[float, float, float, float]] = []
    truth: dict[str, float | str | bool] = {"fracture": fracture, "body_part": body_part}
    for index, (radius, offset) in enumerate(zip(radii, offsets, strict=True)):
        r = radius * scale
        vb = v - offset
        if index != fractured:
            bone += _tube(vb, u, r, length)
            continue
        # the fracture line: through (u_f, 0), tilted by theta from transverse
        u_f = rng.uniform(-0.3, 0.3) * height_mm
        theta = np.deg2rad(
            rng.choice([rng.uniform(-12, 12), rng.uniform(25, 50) * rng.choice([-1, 1])])
        )
        normal_u, normal_v = np.cos(theta), -np.sin(theta)
        signed = (u - u_f) * normal_u + vb * normal_v
        gap = rng.uniform(1.6, 3.2)
        shift = rng.uniform(0.0, 0.5) * r * rng.choice([-1, 1])
        distal = signed > 0
        thickness = np.where(distal, _tube(vb - shift, u, r, length), _tube(vb, u, r, length))
        lucency = np.clip(np.abs(signed) / (gap / 2), 0.0, 1.0) ** 2
        bone += thickness * (0.15 + 0.85 * lucency)
        # box: the segment of the line inside the bone, padded by 4 mm
        ends_v = np.array([-(r + abs(shift)), r + abs(shift)])
        ends_u = u_f + ends_v * np.tan(theta)
        ends_vv = ends_v + offset
        ex = cx + ends_u * np.sin(angle) + ends_vv * np.cos(angle)
        ey = cy + ends_u * np.cos(angle) - ends_vv * np.sin(angle)
        pad = 4.0
        boxes.append(
            (
                (ex.min() - pad) / spacing,
                (ey.min() - pad) / spacing,
                (ex.max() + pad) / spacing,
                (ey.max() + pad) / spacing,
            )
        )
        truth.update(gap_mm=float(gap), displacement_mm=float(abs(shift)))
    # mimics: a nutrient canal (through one cortex only) and skin folds
    canal_u = rng.uniform(-0.3, 0.3) * height_mm
    canal_mask = (np.abs(u - canal_u - 0.4 * (v - offsets[0])) < 0.6) & (
        np.abs(v - offsets[0] - radii[0] * scale * 0.85) < radii[0] * scale * 0.25
    )
    bone = np.where(canal_mask & (rng.random() < 0.6), bone * 0.6, bone)
    for _ in range(int(rng.integers(0, 3))):
        fold_u = rng.uniform(-0.4, 0.4) * height_mm
        fold = np.abs(u - fold_u - rng.uniform(-0.5, 0.5) * v) < 0.8
        soft = np.where(fold & (bone == 0), soft * 0.85, soft)
    attenuation = 0.004 * soft + rng.uniform(0.05, 0.07) * bone
    unit = _smooth(1.0 - np.exp(-attenuation))
    stored, center, width = to_stored(unit, rng)
    return Radiograph(stored, spacing, center, width, boxes, truth)


def fracture_study(
    *,
    fracture: bool,
    seed: int = 0,
    modality: str = "DX",
    body_part: str = "FOREARM",
    photometric: str = "MONOCHROME2",
    study: StudyContext | None = None,
) -> list[pydicom.FileDataset]:
    """A two-view (AP and lateral) radiograph study; both views show the fracture if any."""
    rng = np.random.default_rng(seed)
    study = study or StudyContext(
        patient_name="PHANTOM^FRACTURE",
        patient_id=f"PH-FX-{seed:04d}",
        patient_sex=str(rng.choice(["F", "M"])),
        age_months=float(rng.uniform(18, 80)) * 12,
        study_description=f"XR {body_part}",
    )
    series_uid = generate_uid()
    out = []
    for number, view in enumerate(("AP", "LATERAL"), start=1):
        image = long_bone_radiograph(rng, fracture=fracture, body_part=body_part)
        ds = radiograph_dataset(
            study,
            image,
            modality=modality,
            body_part=body_part,
            view_position="AP" if view == "AP" else "LL",
            photometric=photometric,
            series_instance_uid=series_uid,
            instance_number=number,
            series_description=f"{body_part} {view}",
        )
        out.append(ds)
    return out
