"""Projection radiographs as complete CR or DX instances.

A :class:`Radiograph` is the pixel content a phantom generator draws (stored
values, MONOCHROME2 sense, with physical pixel size and the ground truth);
:func:`radiograph_dataset` wraps it in a Computed Radiography Image
(PS3.3 A.2) or Digital X-Ray Image - For Presentation (PS3.3 A.26) instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from aifi.phantoms.dicom import StudyContext, new_instance, set_pixels

__all__ = ["BITS_STORED", "Radiograph", "radiograph_dataset", "to_stored"]

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
BITS_STORED = 12
_STORED_LOW, _STORED_GAIN = 180.0, 3600.0


@dataclass
class Radiograph:
    """Stored pixel values (bright = dense), pixel size, display window and ground truth."""

    pixels: np.ndarray
    spacing_mm: float
    window_center: float
    window_width: float
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    truth: dict[str, float | str | bool] = field(default_factory=dict)


def to_stored(unit: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """Map a [0, 1] exposure image to 12-bit stored values with quantum noise; returns window."""
    noisy = unit + rng.normal(0.0, rng.uniform(0.006, 0.015), unit.shape)
    stored = np.clip(_STORED_LOW + _STORED_GAIN * noisy, 0, 2**BITS_STORED - 1)
    low, high = np.percentile(stored, (0.5, 99.8))
    return stored.astype(np.uint16), float((low + high) / 2), float(max(high - low, 16.0))


def _anatomic_region(body_part: str) -> Dataset:
    """Anatomic Region Sequence item (CID 4009 style, SNOMED CT codes)."""
    codes = {
        "HAND": ("85562004", "Hand"),
        "FOREARM": ("14975008", "Forearm"),
        "LEG": ("30021000", "Lower leg"),
        "ARM": ("40983000", "Upper arm"),
        "FEMUR": ("71341001", "Femur"),
    }
    value, meaning = codes.get(body_part, ("38866009", "Body part"))
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def radiograph_dataset(
    study: StudyContext,
    image: Radiograph,
    *,
    modality: str = "DX",
    body_part: str = "FOREARM",
    view_position: str = "AP",
    laterality: str = "L",
    photometric: str = "MONOCHROME2",
    series_instance_uid: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    series_description: str = "",
    frames: int = 1,
) -> pydicom.FileDataset:
    """A CR or DX (For Presentation) instance holding ``image``.

    MONOCHROME1 stores inverted values (PS3.3 C.7.6.3.1.2) and an inverted
    window, so both encodings display identically. ``frames`` > 1 repeats
    the image as a multi-frame instance (for exercising multi-frame input).
    """
    if modality not in ("CR", "DX"):
        raise ValueError(f"modality must be CR or DX, not {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, not {photometric!r}")
    ds = new_instance(
        study,
        sop_class_uid=CR_IMAGE_STORAGE if modality == "CR" else DX_FOR_PRESENTATION,
        modality=modality,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        instance_number=instance_number,
        series_description=series_description or f"{body_part} {view_position}",
    )
    max_value = 2**BITS_STORED - 1
    pixels = image.pixels.astype(np.int32)
    center = image.window_center
    if photometric == "MONOCHROME1":
        pixels = max_value - pixels
        center = max_value - center
    stack = np.repeat(pixels[None], frames, axis=0) if frames > 1 else pixels
    ds.PhotometricInterpretation = photometric
    set_pixels(ds, stack, bits_stored=BITS_STORED)
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view_position
    ds.ImageLaterality = laterality
    ds.PatientOrientation = ["A", "F"] if body_part != "HAND" else ["R", "H"]
    spacing = f"{image.spacing_mm:.6f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.KVP = 55 if body_part == "HAND" else 60
    ds.WindowCenter = round(center, 1)
    ds.WindowWidth = round(image.window_width, 1)
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    ds.AnatomicRegionSequence = [_anatomic_region(body_part)]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME2" else -1
        ds.PresentationLUTShape = "IDENTITY"
        ds.DetectorType = "SCINTILLATOR"
        ds.PositionerType = "NONE"
        ds.AcquisitionContextSequence = []
        ds.EstimatedRadiographicMagnificationFactor = 1.0
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    return ds
