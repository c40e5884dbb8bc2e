"""Image preprocessing shared by the ONNX applications.

Each step follows the DICOM pixel pipeline of PS3.4 Annex N (grayscale
transformations) and PS3.3 C.7.6.2 (image plane geometry):

1. stored values → Modality LUT / Rescale Slope & Intercept (PS3.3 C.11.1)
   → measured values (e.g. Hounsfield units), with pydicom's
   :func:`~pydicom.pixels.apply_modality_lut`;
2. radiographs: VOI LUT or window (PS3.3 C.11.2) with
   :func:`~pydicom.pixels.apply_voi_lut`, then MONOCHROME1 inversion
   (PS3.3 C.7.6.3.1.2) so that dense bone is always bright;
3. resampling to a fixed physical pixel size from Pixel Spacing or Imager
   Pixel Spacing (PS3.3 10.7.1.3), and centring into a fixed-size canvas;
4. CT: axial check from Image Orientation (Patient) and slice order along
   the normal from Image Position (Patient) (PS3.3 C.7.6.2.1.1).

Each function is pure: arrays in, arrays out. :class:`Geometry` maps a point
of the model's canvas back to a column/row of the source image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from aifi.errors import InputNotAccepted

__all__ = [
    "Geometry",
    "axial_normal",
    "fit_to_canvas",
    "frames_of",
    "modality_values",
    "pixel_spacing_mm",
    "radiograph_frames",
    "resample",
    "slice_position",
    "to_canvas",
    "window",
]


@dataclass(frozen=True)
class Geometry:
    """Canvas pixel ↔ source pixel: ``source = (canvas - offset) * scale``, per axis (x, y)."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        """Map a canvas point (column, row; pixel centres at .5) to the source image."""
        return ((x - self.offset_x) * self.scale_x, (y - self.offset_y) * self.scale_y)


def frames_of(ds: pydicom.Dataset) -> np.ndarray:
    """Pixel data as a (frames, rows, columns) array; single-frame images give one frame."""
    try:
        arr = ds.pixel_array
    except (AttributeError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise InputNotAccepted(f"pixel data cannot be decoded: {exc}") from exc
    if getattr(ds, "SamplesPerPixel", 1) != 1:
        raise InputNotAccepted("only grayscale (Samples per Pixel = 1) images are accepted")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return arr.reshape(frames, int(ds.Rows), int(ds.Columns))


def modality_values(ds: pydicom.Dataset, arr: np.ndarray) -> np.ndarray:
    """Apply the Modality LUT or rescale (PS3.3 C.11.1); enhanced objects keep it per frame.

    For multi-frame enhanced objects the rescale lives in the Pixel Value
    Transformation Sequence of the shared functional groups (PS3.3 C.7.6.16.2.9).
    """
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and "PixelValueTransformationSequence" in shared[0]:
        item = shared[0].PixelValueTransformationSequence[0]
        slope = float(item.get("RescaleSlope", 1.0))
        intercept = float(item.get("RescaleIntercept", 0.0))
        return arr.astype(np.float64) * slope + intercept
    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)


def _voi_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The output range pydicom's windowing maps to (mirrors PS3.3 C.11.2.1.2)."""
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def radiograph_frames(ds: pydicom.Dataset) -> list[np.ndarray]:
    """Each frame of a projection radiograph as float32 in [0, 1], dense (bone) bright.

    Stored values pass the Modality LUT, then the VOI LUT or first window when
    the image has one (otherwise the 0.5-99.5 percentile range), then
    MONOCHROME1 images are inverted.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputNotAccepted(
            f"Photometric Interpretation {photometric} is not a grayscale radiograph"
        )
    has_voi = bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)
    out = []
    for stored in frames_of(ds):
        values = modality_values(ds, stored)
        if has_voi:
            low, high = _voi_output_range(ds)
            values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        else:
            low, high = (float(v) for v in np.percentile(values, (0.5, 99.5)))
        unit = np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)
        if photometric == "MONOCHROME1":
            unit = 1.0 - unit
        out.append(unit.astype(np.float32))
    return out


def pixel_spacing_mm(ds: pydicom.Dataset) -> tuple[float, float]:
    """(row spacing, column spacing) in mm.

    Pixel Spacing (0028,0030) when present (calibrated at the patient);
    otherwise Imager Pixel Spacing (0018,1164) divided by Estimated
    Radiographic Magnification Factor (0018,1114), per PS3.3 10.7.1.3;
    otherwise, for computed radiography, the plate: Cassette Size (0018,1403,
    e.g. ``35CMX43CM``) over Rows and Columns, turned by Cassette Orientation
    (0018,1402), as older CR readers record no spacing (PS3.3 C.8.1.2).
    """
    if "PixelSpacing" in ds and ds.PixelSpacing:
        row, col = (float(v) for v in ds.PixelSpacing)
    elif "ImagerPixelSpacing" in ds and ds.ImagerPixelSpacing:
        magnification = float(ds.get("EstimatedRadiographicMagnificationFactor", 1.0) or 1.0)
        row, col = (float(v) / magnification for v in ds.ImagerPixelSpacing)
    elif (plate := _cassette_spacing(ds)) is not None:
        row, col = plate
    else:
        raise InputNotAccepted(
            "the image has neither Pixel Spacing, Imager Pixel Spacing nor a Cassette Size; "
            "its physical size is unknown"
        )
    if row <= 0 or col <= 0:
        raise InputNotAccepted("pixel spacing must be positive")
    return row, col


def _cassette_spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """Spacing of a CR image from its plate size (``"35CMX43CM"``: width x height)."""
    size = str(ds.get("CassetteSize", "") or "").upper().replace(" ", "")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(CM|IN)X(\d+(?:\.\d+)?)(CM|IN)", size)
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if match is None or rows <= 0 or columns <= 0:
        return None
    mm = {"CM": 10.0, "IN": 25.4}
    width = float(match.group(1)) * mm[match.group(2)]
    height = float(match.group(3)) * mm[match.group(4)]
    if str(ds.get("CassetteOrientation", "")).upper() == "LANDSCAPE":
        width, height = max(width, height), min(width, height)
    else:
        width, height = min(width, height), max(width, height)
    return height / rows, width / columns


def resample(
    image: np.ndarray, spacing: tuple[float, float], target_mm: float
) -> tuple[np.ndarray, float, float]:
    """Resample ``image`` to ``target_mm`` per pixel (bilinear); returns it and the x, y scales.

    The scales map a resampled pixel to a source pixel.
    """
    row_mm, col_mm = spacing
    rows, cols = image.shape
    new_rows = max(1, round(rows * row_mm / target_mm))
    new_cols = max(1, round(cols * col_mm / target_mm))
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
        (new_cols, new_rows), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32), cols / new_cols, rows / new_rows


def fit_to_canvas(image: np.ndarray, size: int, fill: float = 0.0) -> tuple[np.ndarray, int, int]:
    """Centre ``image`` on a ``size``x``size`` canvas (crop or pad); returns it and x, y offsets.

    The offsets are where the image's (0, 0) lands on the canvas (negative when cropped).
    """
    rows, cols = image.shape
    canvas = np.full((size, size), fill, dtype=np.float32)
    off_y, off_x = (size - rows) // 2, (size - cols) // 2
    src_y0, src_x0 = max(0, -off_y), max(0, -off_x)
    dst_y0, dst_x0 = max(0, off_y), max(0, off_x)
    h = min(rows - src_y0, size - dst_y0)
    w = min(cols - src_x0, size - dst_x0)
    canvas[dst_y0 : dst_y0 + h, dst_x0 : dst_x0 + w] = image[
        src_y0 : src_y0 + h, src_x0 : src_x0 + w
    ]
    return canvas, off_x, off_y


def to_canvas(
    image: np.ndarray, spacing: tuple[float, float], target_mm: float, size: int
) -> tuple[np.ndarray, Geometry]:
    """Resample to ``target_mm`` and centre on a ``size`` canvas, with the geometry back."""
    resampled, sx, sy = resample(image, spacing, target_mm)
    canvas, ox, oy = fit_to_canvas(resampled, size, fill=float(np.percentile(resampled, 1)))
    return canvas, Geometry(scale_x=sx, scale_y=sy, offset_x=ox, offset_y=oy)


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window to [0, 1] (PS3.3 C.11.2.1.2.1, the LINEAR function)."""
    low = center - 0.5 - (width - 1) / 2
    return np.clip((values - low) / max(width - 1, 1e-6), 0.0, 1.0).astype(np.float32)


def axial_normal(ds: pydicom.Dataset) -> np.ndarray:
    """The slice normal (row direction x column direction) from Image Orientation (Patient)."""
    if "ImageOrientationPatient" not in ds:
        raise InputNotAccepted("a CT slice has no Image Orientation (Patient)")
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def slice_position(ds: pydicom.Dataset, normal: np.ndarray) -> float:
    """Distance of the slice along ``normal`` (Image Position (Patient) · normal)."""
    if "ImagePositionPatient" not in ds:
        raise InputNotAccepted("a CT slice has no Image Position (Patient)")
    return float(np.dot([float(v) for v in ds.ImagePositionPatient], normal))
