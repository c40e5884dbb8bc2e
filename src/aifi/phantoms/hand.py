"""Posteroanterior radiographs of a child's left hand at a given skeletal maturity.

What a reader of bone age looks at, per Greulich & Pyle and Tanner-Whitehouse,
is drawn from the maturity ``u`` in [0, 1] (0 = birth, 1 = adult skeleton):

* the eight carpal ossification centres appear in the usual order
  (capitate, hamate, triquetrum, lunate, trapezium, trapezoid, scaphoid,
  pisiform) and grow;
* the epiphyses of the radius, ulna, metacarpals and phalanges appear,
  widen until they cap their metaphyses, and their growth plates (physes)
  narrow and close;
* the bones lengthen (the whole hand grows).

Girls mature earlier: the same maturity is reached at a bone age of
``u x 216`` months for girls and ``u x 228`` months for boys, and boys'
hands are larger. Left hand, PA: the thumb is on the image's right.
"""

from __future__ import annotations

import numpy as np
import pydicom

from aifi.phantoms.dicom import StudyContext
from aifi.phantoms.radiograph import Radiograph, radiograph_dataset, to_stored

__all__ = ["ADULT_BONE_AGE_MONTHS", "bone_age_study", "hand_radiograph", "maturity"]

ADULT_BONE_AGE_MONTHS = {"F": 216.0, "M": 228.0}

# carpal bone: (x, y) in mm on an adult hand (x to the thumb, y to the fingers),
# adult semi-axes (a, b), maturity at which its ossification centre appears
_CARPALS = {
    "capitate": ((0.0, 22.0), (7.0, 10.0), 0.005),
    "hamate": ((-12.0, 23.0), (6.5, 9.0), 0.01),
    "triquetrum": ((-14.0, 10.0), (6.0, 5.5), 0.13),
    "lunate": ((-1.0, 8.0), (6.5, 6.0), 0.2),
    "trapezium": ((18.0, 19.0), (6.5, 6.5), 0.26),
    "trapezoid": ((10.0, 23.0), (5.0, 6.0), 0.28),
    "scaphoid": ((12.0, 8.0), (6.0, 8.5), 0.3),
    "pisiform": ((-17.0, 6.0), (3.5, 4.0), 0.5),
}
# rays from thumb (1) to little finger (5): base x, angle (deg), lengths of
# metacarpal, proximal, middle, distal phalanx (mm, adult), shaft radius
_RAYS = (
    (24.0, -38.0, (44.0, 31.0, 0.0, 23.0), 4.5),
    (12.0, -8.0, (66.0, 40.0, 24.0, 18.0), 4.3),
    (2.0, 0.0, (63.0, 45.0, 28.0, 19.0), 4.3),
    (-8.0, 8.0, (58.0, 42.0, 26.0, 18.0), 4.0),
    (-17.0, 16.0, (52.0, 33.0, 19.0, 16.0), 3.6),
)
_ADULT_HAND_LENGTH = 190.0


def maturity(bone_age_months: float, sex: str) -> float:
    """Skeletal maturity in [0, 1] for a bone age and sex ('F' or 'M')."""
    if sex not in ADULT_BONE_AGE_MONTHS:
        raise ValueError(f"sex must be 'F' or 'M', not {sex!r}")
    return float(np.clip(bone_age_months / ADULT_BONE_AGE_MONTHS[sex], 0.0, 1.0))


def _smoothstep(a: float, b: float, x: float) -> float:
    t = float(np.clip((x - a) / (b - a), 0.0, 1.0))
    return t * t * (3 - 2 * t)


class _Canvas:
    """Accumulates projected thickness of primitives, each evaluated only in its bounding box."""

    def __init__(self, rows: int, cols: int, spacing: float) -> None:
        self.spacing = spacing
        self.bone = np.zeros((rows, cols))
        self.soft = np.zeros((rows, cols))

    def _window(
        self, cx: float, cy: float, reach: float
    ) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        s = self.spacing
        rows, cols = self.bone.shape
        r0, r1 = max(0, int((cy - reach) / s)), min(rows, int((cy + reach) / s) + 2)
        c0, c1 = max(0, int((cx - reach) / s)), min(cols, int((cx + reach) / s) + 2)
        y, x = np.mgrid[r0:r1, c0:c1].astype(np.float64) * s
        return slice(r0, r1), slice(c0, c1), x - cx, y - cy

    def ellipsoid(
        self, cx: float, cy: float, a: float, b: float, angle: float, *, soft: bool = False
    ) -> None:
        rs, cs, dx, dy = self._window(cx, cy, max(a, b) + 1)
        c, s = np.cos(angle), np.sin(angle)
        p, q = (dx * c + dy * s) / a, (-dx * s + dy * c) / b
        t = 2 * min(a, b) * np.sqrt(np.clip(1 - p * p - q * q, 0.0, None))
        if soft:
            self.soft[rs, cs] = np.maximum(self.soft[rs, cs], t)
        else:
            self.bone[rs, cs] += t

    def capsule(self, p0: np.ndarray, p1: np.ndarray, radius: float, *, soft: bool = False) -> None:
        """A tube from p0 to p1: soft tissue solid, bone a cortical shell with a lighter canal."""
        mid = (p0 + p1) / 2
        half = float(np.linalg.norm(p1 - p0)) / 2
        rs, cs, dx, dy = self._window(mid[0], mid[1], half + radius + 1)
        axis = (p1 - p0) / max(2 * half, 1e-6)
        along = dx * axis[0] + dy * axis[1]
        across = -dx * axis[1] + dy * axis[0]
        along_out = np.clip(np.abs(along) - half, 0.0, None)
        dist2 = across**2 + along_out**2
        outer = 2 * np.sqrt(np.clip(radius**2 - dist2, 0.0, None))
        if soft:
            self.soft[rs, cs] = np.maximum(self.soft[rs, cs], outer)
            return
        inner = 2 * np.sqrt(np.clip((0.55 * radius) ** 2 - dist2, 0.0, None))
        self.bone[rs, cs] += outer - 0.6 * inner


def _long_bone(
    canvas: _Canvas,
    base: np.ndarray,
    direction: np.ndarray,
    length: float,
    radius: float,
    *,
    epiphysis_at_base: bool,
    u: float,
    appears: float,
    fuses: float,
    scale: float,
) -> np.ndarray:
    """Draw a tubular bone with its epiphysis; returns the far end."""
    end = base + direction * length
    if u < appears:
        canvas.capsule(base + direction * 1.5, end - direction * 1.5, radius)
        return end
    width = radius * (0.55 + 0.95 * _smoothstep(appears, 0.6, u))  # semi-width of epiphysis
    height = max(0.45 * width, 1.0)
    gap = 2.4 * scale * (1.0 - _smoothstep(fuses - 0.18, fuses, u))
    room = 2 * height + gap
    if epiphysis_at_base:
        shaft0, shaft1 = base + direction * room, end
        centre = base + direction * height
    else:
        shaft0, shaft1 = base, end - direction * room
        centre = end - direction * height
    canvas.capsule(shaft0, shaft1, radius)
    angle = float(np.arctan2(direction[1], direction[0]))
    canvas.ellipsoid(centre[0], centre[1], height, width, angle)
    return end


def hand_radiograph(
    rng: np.random.Generator,
    *,
    bone_age_months: float,
    sex: str,
    spacing_mm: float | None = None,
) -> Radiograph:
    """One PA radiograph of a left hand with the skeletal maturity of ``bone_age_months``."""
    u = maturity(bone_age_months, sex)
    spacing = spacing_mm or float(rng.uniform(0.45, 0.7))
    size = (0.42 + 0.58 * u**0.75) * (1.0 if sex == "M" else 0.93) * rng.uniform(0.95, 1.05)
    scale = size  # mm of this hand per mm of the adult template
    height_mm, width_mm = 250.0, 200.0
    rows, cols = int(height_mm / spacing), int(width_mm / spacing)
    canvas = _Canvas(rows, cols, spacing)
    tilt = np.deg2rad(rng.uniform(-8, 8))
    rot = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    wrist = np.array([width_mm / 2 + rng.uniform(-10, 10), height_mm * 0.78 + rng.uniform(-6, 6)])

    def place(x: float, y: float) -> np.ndarray:
        # template: x to the thumb (image right), y towards the fingers (image up)
        return wrist + rot @ np.array([x * scale, -y * scale])

    def heading(deg: float) -> np.ndarray:
        a = np.deg2rad(deg)
        return rot @ np.array([-np.sin(a), -np.cos(a)])

    jitter = lambda: rng.uniform(0.96, 1.04)  # noqa: E731
    # forearm bones, epiphyses at their distal (wrist) end
    for x, radius, appears, fuses in ((12.0, 9.5, 0.05, 0.97), (-13.0, 7.0, 0.33, 0.97)):
        top = place(x, -3.0)
        bottom = place(x, -80.0)
        direction = (top - bottom) / np.linalg.norm(top - bottom)
        _long_bone(
            canvas,
            bottom,
            direction,
            float(np.linalg.norm(top - bottom)),
            radius * scale,
            epiphysis_at_base=False,
            u=u,
            appears=appears,
            fuses=fuses,
            scale=scale,
        )
        canvas.capsule(bottom, top, (radius + 9.0) * scale, soft=True)
    # carpal ossification centres
    for (x, y), (a, b), appears in _CARPALS.values():
        if u <= appears:
            continue
        grow = 0.25 + 0.75 * _smoothstep(appears, appears + 0.45, u)
        c = place(x, y)
        canvas.ellipsoid(c[0], c[1], a * scale * grow * jitter(), b * scale * grow * jitter(), tilt)
    palm = place(0.0, 18.0)
    canvas.ellipsoid(palm[0], palm[1], 42 * scale, 30 * scale, tilt, soft=True)
    # metacarpals and phalanges
    for ray, (base_x, deg, lengths, radius) in enumerate(_RAYS, start=1):
        direction = heading(deg + rng.uniform(-4, 4))
        point = place(base_x, 33.0 if ray > 1 else 26.0)
        start = point.copy()
        for index, length in enumerate(lengths):
            if length == 0.0:
                continue
            r = radius * scale * (1.0 if index < 2 else 0.8)
            # metacarpals 2-5 carry their epiphysis distally, all others proximally
            at_base = not (index == 0 and ray > 1)
            point = (
                _long_bone(
                    canvas,
                    point,
                    direction,
                    length * scale * jitter(),
                    r,
                    epiphysis_at_base=at_base,
                    u=u,
                    appears=0.08 + 0.01 * ray,
                    fuses=0.9,
                    scale=scale,
                )
                + direction * 1.5 * scale
            )
        canvas.capsule(start, point, (radius + 6.5) * scale, soft=True)
    attenuation = 0.0045 * canvas.soft + rng.uniform(0.05, 0.065) * canvas.bone
    unit = 1.0 - np.exp(-attenuation)
    stored, center, width = to_stored(unit, rng)
    truth: dict[str, float | str | bool] = {"bone_age_months": float(bone_age_months), "sex": sex}
    return Radiograph(stored, spacing, center, width, [], truth)


def bone_age_study(
    *,
    age_months: float,
    sex: str,
    bone_age_months: float | None = None,
    seed: int = 0,
    modality: str = "CR",
    photometric: str = "MONOCHROME1",
    study: StudyContext | None = None,
) -> list[pydicom.FileDataset]:
    """A one-image PA left-hand study of a child; bone age defaults to the chronological age.

    ``sex`` is written to Patient's Sex as given ('F', 'M', 'O' or '' for
    unknown); the image is drawn as a girl's unless ``sex`` is 'M'.
    """
    rng = np.random.default_rng(seed)
    drawn_sex = "M" if sex == "M" else "F"
    image = hand_radiograph(
        rng,
        bone_age_months=age_months if bone_age_months is None else bone_age_months,
        sex=drawn_sex,
    )
    study = study or StudyContext(
        patient_name="PHANTOM^HAND",
        patient_id=f"PH-BA-{seed:04d}",
        patient_sex=sex,
        age_months=age_months,
        study_description="XR HAND BONE AGE",
    )
    ds = radiograph_dataset(
        study,
        image,
        modality=modality,
        body_part="HAND",
        view_position="PA",
        photometric=photometric,
        series_description="HAND PA LEFT",
    )
    return [ds]
