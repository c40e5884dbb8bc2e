"""Axial CT of the chest, with or without contrast, with or without pulmonary emboli.

The phantom draws, slice by slice in patient coordinates (LPS, PS3.3
C.7.6.2.1.1): the body wall, both lungs, heart, aorta, spine, the pulmonary
trunk with the right and left pulmonary arteries, lobar arteries and veins
running through the lungs, and mediastinal lymph nodes (soft-tissue mimics
next to vessels). With contrast the vessels enhance (180-350 HU); an embolus
is a filling defect of clot density (20-60 HU) inside an enhanced pulmonary
artery, which is what a reader looks for on a CT pulmonary angiogram or an
incidental finding on a contrast-enhanced oncology CT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from aifi.phantoms.dicom import StudyContext, new_instance, set_pixels

__all__ = ["ChestCT", "Embolus", "chest_ct_series", "chest_ct_volume"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_RESCALE_INTERCEPT = -1024.0


@dataclass(frozen=True)
class Embolus:
    """A filling defect: centre (x, y, z in mm, LPS) and radii in-plane and along z."""

    x: float
    y: float
    z: float
    radius: float
    half_length: float
    vessel: str


@dataclass
class ChestCT:
    """A CT volume in Hounsfield units (slices ordered by increasing z) and its geometry."""

    hu: np.ndarray
    spacing_mm: float
    slice_positions: np.ndarray
    x0: float
    y0: float
    contrast: bool
    emboli: list[Embolus] = field(default_factory=list)
    hilum_z: float = 0.0

    def embolus_mask(  # called-by: training/train_incidental_pe.py (labels)
        self,
        index: int,
    ) -> np.ndarray:
        """Boolean mask of embolus pixels on slice ``index``."""
        rows, cols = self.hu.shape[1:]
        y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
        x = self.x0 + x * self.spacing_mm
        y = self.y0 + y * self.spacing_mm
        z = float(self.slice_positions[index])
        mask = np.zeros((rows, cols), dtype=bool)
        for e in self.emboli:
            if abs(z - e.z) <= e.half_length:
                mask |= (x - e.x) ** 2 + (y - e.y) ** 2 <= e.radius**2
        return mask


@dataclass
class _Vessel:
    name: str
    x0: float
    y0: float
    x1: float
    y1: float
    z0: float
    z1: float
    radius: float
    artery: bool

    def centre(self, z: float) -> tuple[float, float] | None:
        if not self.z0 <= z <= self.z1:
            return None
        t = (z - self.z0) / max(self.z1 - self.z0, 1e-6)
        return self.x0 + t * (self.x1 - self.x0), self.y0 + t * (self.y1 - self.y0)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0


def _segment(
    x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], r: float
) -> np.ndarray:
    px, py = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * px + (y - p0[1]) * py) / (px * px + py * py), 0.0, 1.0)
    return (x - p0[0] - t * px) ** 2 + (y - p0[1] - t * py) ** 2 <= r * r


def _vessels(
    rng: np.random.Generator, z_hilum: float, z_low: float, z_high: float
) -> list[_Vessel]:
    vessels = []
    for side in (-1.0, 1.0):  # -1: patient's right (image left), +1: patient's left
        for k in range(7):
            upward = k % 2 == 0
            artery = k < 5
            hx, hy = side * rng.uniform(35, 50), rng.uniform(-10, 15)
            px, py = side * rng.uniform(55, 100), rng.uniform(-45, 45)
            zs = (
                (z_hilum, rng.uniform(z_hilum + 40, z_high))
                if upward
                else (rng.uniform(z_low, z_hilum - 40), z_hilum)
            )
            start, end = ((hx, hy), (px, py)) if upward else ((px, py), (hx, hy))
            vessels.append(
                _Vessel(
                    name=f"{'left' if side > 0 else 'right'} {'artery' if artery else 'vein'} {k}",
                    x0=start[0],
                    y0=start[1],
                    x1=end[0],
                    y1=end[1],
                    z0=zs[0],
                    z1=zs[1],
                    radius=rng.uniform(6.0, 8.0) if artery else rng.uniform(4.0, 5.5),
                    artery=artery,
                )
            )
    return vessels


def chest_ct_volume(
    rng: np.random.Generator,
    *,
    embolus: bool,
    contrast: bool = True,
    slices: int = 48,
    slice_thickness: float = 5.0,
    size: int = 192,
    spacing_mm: float = 1.8,
    region: str = "CHEST",
) -> ChestCT:
    """A chest (or, with ``region='ABDOMEN'``, upper abdomen: no lungs) CT volume in HU."""
    if region not in ("CHEST", "ABDOMEN"):
        raise ValueError(f"region must be CHEST or ABDOMEN, not {region!r}")
    if embolus and not contrast:
        raise ValueError("an embolus is only visible, and only drawn, with contrast")
    x0 = y0 = -(size - 1) / 2 * spacing_mm
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) * spacing_mm
    x, y = x + x0, y + y0
    z_low, z_high = -250.0, 0.0  # the lungs span z -250 (bases) .. 0 (apices)
    z_start = z_low - 10.0 if region == "CHEST" else z_low - 20 - slices * slice_thickness
    z_start += rng.uniform(-10, 10)
    positions = z_start + np.arange(slices) * slice_thickness
    z_hilum = z_low + 0.6 * (z_high - z_low) + rng.uniform(-10, 10)
    s = rng.uniform(0.9, 1.1)
    vessel_hu = rng.uniform(180, 350) if contrast else rng.uniform(35, 50)
    vessels = _vessels(rng, z_hilum, z_low + 20, z_high - 20)
    trunk = _Vessel("pulmonary trunk", 18, -35, 12, -22, z_hilum - 30, z_hilum + 10, 13.0, True)
    right_pa = ((5.0, -18.0), (-45.0, 0.0))
    left_pa = ((20.0, -22.0), (45.0, 5.0))
    emboli: list[Embolus] = []
    if embolus:
        where = rng.choice(["central", "lobar", "lobar"])
        if where == "central":
            side = rng.choice([0, 1])
            (ax, ay), (bx, by) = (right_pa, left_pa)[side]
            t = rng.uniform(0.35, 0.8)
            emboli.append(
                Embolus(
                    ax + t * (bx - ax),
                    ay + t * (by - ay),
                    z_hilum + 8,
                    rng.uniform(4.5, 6.5),
                    rng.uniform(4, 7),
                    ("right", "left")[side] + " pulmonary artery",
                )
            )
        arteries = [v for v in vessels if v.artery]
        for v in rng.choice(
            np.array(arteries, dtype=object), size=int(rng.integers(1, 3)), replace=False
        ):
            zc = rng.uniform(v.z0 + 10, v.z1 - 10)
            cx, cy = v.centre(zc) or (0.0, 0.0)
            emboli.append(
                Embolus(cx, cy, zc, v.radius * rng.uniform(0.8, 1.0), rng.uniform(10, 20), v.name)
            )
    nodes = [
        (
            rng.uniform(-25, 25),
            rng.uniform(-35, 20),
            rng.uniform(z_low + 60, z_high - 30),
            rng.uniform(5, 9),
        )
        for _ in range(int(rng.integers(1, 4)))
    ]
    hu = np.empty((slices, size, size), dtype=np.float32)
    for i, z in enumerate(positions):
        f = (z - z_low) / (z_high - z_low)  # 0 at lung bases, 1 at apices
        sl = np.full((size, size), -1000.0)
        body = _ellipse(x, y, 0, 0, 150 * s, 105 * s)
        sl[body] = -90.0
        sl[_ellipse(x, y, 0, 0, 138 * s, 93 * s)] = 40.0
        if 0.0 <= f <= 1.0:
            grow = np.sin(np.pi * (0.12 + 0.8 * f)) ** 0.7
            for side in (-1.0, 1.0):
                a, b = 58 * s * grow + 8, 70 * s * grow + 8
                lung = _ellipse(x, y, side * 72 * s, 0, a, b) & ~_ellipse(x, y, 0, 0, 30, 200)
                sl[lung] = -850.0
        if f < 0.55:  # heart
            hs = 1.0 - f / 0.55 * 0.6
            sl[_ellipse(x, y, 20, -25, 55 * hs * s, 42 * hs * s)] = 40.0
            if contrast:
                sl[_ellipse(x, y, 20, -25, 42 * hs * s, 30 * hs * s)] = vessel_hu * 0.85
        sl[_ellipse(x, y, 0, 70 * s, 19, 17)] = 700.0
        sl[_ellipse(x, y, 0, 70 * s, 16, 14)] = 250.0
        sl[_ellipse(x, y, 0, 95 * s, 8, 8)] = 15.0
        sl[_ellipse(x, y, 22, 52 * s, 12, 12)] = vessel_hu  # descending aorta
        if 0.45 <= f <= 0.85:
            sl[_ellipse(x, y, -8, -20, 15, 15)] = vessel_hu  # ascending aorta
        for nx, ny, nz, nr in nodes:
            if abs(z - nz) < nr:
                sl[_ellipse(x, y, nx, ny, nr, nr * 0.8)] = 45.0
        if trunk.centre(z):
            cx, cy = trunk.centre(z) or (0.0, 0.0)
            sl[_ellipse(x, y, cx, cy, trunk.radius, trunk.radius)] = vessel_hu
        if abs(z - (z_hilum + 8)) < 9:
            for p0, p1 in (right_pa, left_pa):
                sl[_segment(x, y, p0, p1, 9.0)] = vessel_hu
        if 0.0 <= f <= 1.0:
            for v in vessels:
                c = v.centre(z)
                if c is not None:
                    sl[_ellipse(x, y, c[0], c[1], v.radius, v.radius)] = vessel_hu * (
                        1.0 if v.artery else 0.8
                    )
        for e in emboli:
            if abs(z - e.z) <= e.half_length:
                sl[_ellipse(x, y, e.x, e.y, e.radius, e.radius)] = rng.uniform(20, 60)
        sl += rng.normal(0, rng.uniform(10, 18), sl.shape)
        hu[i] = sl
    return ChestCT(hu, spacing_mm, positions, x0, y0, contrast, emboli, float(z_hilum))


def chest_ct_series(
    *,
    embolus: bool,
    contrast: bool = True,
    seed: int = 0,
    slices: int = 48,
    slice_thickness: float = 5.0,
    region: str = "CHEST",
    study: StudyContext | None = None,
    series_number: int = 2,
    volume: ChestCT | None = None,
) -> list[pydicom.FileDataset]:
    """An axial CT Image Storage series (PS3.3 A.3) of a :func:`chest_ct_volume`."""
    rng = np.random.default_rng(seed)
    volume = volume or chest_ct_volume(
        rng,
        embolus=embolus,
        contrast=contrast,
        slices=slices,
        slice_thickness=slice_thickness,
        region=region,
    )
    study = study or StudyContext(
        patient_name="PHANTOM^CT",
        patient_id=f"PH-CT-{seed:04d}",
        patient_sex=str(rng.choice(["F", "M"])),
        age_months=float(rng.uniform(40, 80)) * 12,
        study_description=f"CT {region} {'WITH' if contrast else 'WITHOUT'} CONTRAST",
    )
    series_uid, frame_uid = generate_uid(), generate_uid()
    description = f"{region} {'C+' if contrast else 'C-'} {slice_thickness:g}mm AXIAL"
    out = []
    stored = np.clip(np.round(volume.hu - _RESCALE_INTERCEPT), 0, 4095)
    for i, z in enumerate(volume.slice_positions):
        ds = new_instance(
            study,
            sop_class_uid=CT_IMAGE_STORAGE,
            modality="CT",
            series_instance_uid=series_uid,
            series_number=series_number,
            instance_number=i + 1,
            series_description=description,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PhotometricInterpretation = "MONOCHROME2"
        set_pixels(ds, stored[i], bits_stored=12)
        ds.RescaleIntercept = _RESCALE_INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = region
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        spacing = f"{volume.spacing_mm:.4f}"
        ds.PixelSpacing = [spacing, spacing]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [f"{volume.x0:.3f}", f"{volume.y0:.3f}", f"{z:.3f}"]
        ds.SliceThickness = f"{slice_thickness:g}"
        ds.SliceLocation = f"{z:.3f}"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.ContrastBolusAgent = "IOHEXOL 350 MG I/ML" if volume.contrast else None
        if not volume.contrast:
            del ds.ContrastBolusAgent
        out.append(ds)
    return out
