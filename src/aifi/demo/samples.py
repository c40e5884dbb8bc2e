"""Fictitious sample studies, written as complete, valid DICOM files.

The demo, the tests and the benchmarks need studies that look like what a
hospital PACS sends: every identifying attribute a real study carries (so
pseudonymization has something to remove), real geometry, pixel data with
some structure. Everything here is invented; patient names are ``DEMO^...``
and IDs ``DEMO-...`` so that a leak is obvious.

* :func:`cr_study` — radiographs, CR Image Storage (PS3.3 A.2): the input of
  the fracture and bone-age algorithms.
* :func:`ct_series` — a contrast-enhanced chest CT, CT Image Storage
  (PS3.3 A.3): the input of the incidental pulmonary embolism algorithm.
* :func:`compressed` — the same instance re-encoded with a lossless
  compressed transfer syntax (PS3.5 §8.2, §A.4), for "stored as received".
* :func:`write_study` — save datasets as DICOM Part 10 files (PS3.10 §7).

Each instance carries a private block (PS3.5 §7.8.1) under the creator
:data:`PRIVATE_CREATOR` whose value repeats the patient ID: a canary that
must never reach the hub (:func:`leak_canary`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from copy import deepcopy
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

__all__ = [
    "DEMO_PATIENTS",
    "PRIVATE_CREATOR",
    "SamplePatient",
    "compressed",
    "cr_study",
    "ct_series",
    "leak_canary",
    "write_study",
]

logger = logging.getLogger(__name__)

#: Private Creator (PS3.5 §7.8.1) of the leak-canary block in group 0x0009.
PRIVATE_CREATOR = "AIFI DEMO CANARY"
_PRIVATE_GROUP = 0x0009

_INSTITUTION = "Demo General Hospital"
_INSTITUTION_ADDRESS = "1 Example Street, Demotown"


@dataclass(frozen=True)
class SamplePatient:
    """A fictitious patient: Patient module (PS3.3 C.7.1.1) values."""

    name: str
    id: str
    birth_date: date
    sex: str

    def __post_init__(self) -> None:
        if not self.name.startswith("DEMO^"):
            raise ValueError(f"sample patient name {self.name!r} must start with 'DEMO^'")
        if self.sex not in ("M", "F", "O"):
            raise ValueError(f"sample patient sex {self.sex!r} must be M, F or O")


#: Fictitious patients: an adult (fractures), a child (bone age), an adult (CT).
DEMO_PATIENTS: tuple[SamplePatient, ...] = (
    SamplePatient("DEMO^ALICE", "DEMO-0001", date(1961, 4, 12), "F"),
    SamplePatient("DEMO^BOBBY", "DEMO-0002", date(2014, 9, 3), "M"),
    SamplePatient("DEMO^CAROL", "DEMO-0003", date(1955, 1, 30), "F"),
)


def leak_canary(  # called-by: tests/demo and the peers harness (checks a sample carries its marker)
    ds: Dataset,
) -> str | None:
    """The canary value of the private block, or ``None`` when the block is gone."""
    try:
        block = ds.private_block(_PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None
    if 0x01 not in block:
        return None
    return str(block[0x01].value)


def _age(birth: date, on: date) -> str:
    """Patient's Age (0010,1010) as an AS value, PS3.5 §6.2: ``nnnY`` or ``nnnM``."""
    months = (on.year - birth.year) * 12 + on.month - birth.month - (on.day < birth.day)
    if months < 24:
        return f"{max(months, 0):03d}M"
    return f"{months // 12:03d}Y"


def _uid(seed: str | None, *parts: object) -> UID:
    """A fresh UID, or a reproducible one derived from ``seed`` and ``parts``."""
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[seed, *(str(p) for p in parts)])


def _accession(prefix: str, study_uid: UID) -> str:
    """An Accession Number (SH, at most 16 characters) derived from the study UID."""
    return prefix + study_uid.replace(".", "")[-8:]


def _base(
    patient: SamplePatient,
    *,
    sop_class: UID,
    modality: str,
    study_uid: UID,
    series_uid: UID,
    when: datetime,
    accession: str,
    study_description: str,
) -> Dataset:
    """Patient, General Study, Patient Study, General Series, General Equipment, SOP Common."""
    ds = Dataset()
    # SOP Common (PS3.3 C.12.1)
    ds.SOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    # Patient (C.7.1.1)
    ds.PatientName = patient.name
    ds.PatientID = patient.id
    ds.IssuerOfPatientID = "DEMO-HOSPITAL"
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    other = Dataset()
    other.PatientID = f"{patient.id}-OLD"
    other.IssuerOfPatientID = "DEMO-OLD-RIS"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    ds.PatientAddress = "2 Fiction Lane, Demotown"
    # General Study (C.7.2.1) and Patient Study (C.7.2.2)
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.AccessionNumber = accession
    ds.StudyID = accession[-6:]
    ds.ReferringPhysicianName = "DEMO^REFERRER"
    ds.StudyDescription = study_description
    ds.PatientAge = _age(patient.birth_date, when.date())
    child = ds.PatientAge.endswith("M") or int(ds.PatientAge[:3]) < 18
    ds.PatientSize = 1.40 if child else 1.70
    ds.PatientWeight = 35 if child else 70
    # General Series (C.7.3.1)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.OperatorsName = "DEMO^OPERATOR"
    # General Equipment (C.7.5.1)
    ds.Manufacturer = "aifi demo"
    ds.InstitutionName = _INSTITUTION
    ds.InstitutionAddress = _INSTITUTION_ADDRESS
    ds.StationName = "DEMO-STATION-1"
    ds.InstitutionalDepartmentName = "Radiology"
    ds.ManufacturerModelName = "Synthetic"
    ds.DeviceSerialNumber = "SN-DEMO-0001"
    ds.SoftwareVersions = "aifi-demo"
    # Leak canary (PS3.5 §7.8.1): repeats the patient ID in a private element.
    block = ds.private_block(_PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", f"{patient.id} canary")
    return ds


def _with_meta(ds: Dataset) -> Dataset:
    """Add File Meta Information (PS3.10 §7.1), Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def _radiograph(rows: int, columns: int, index: int) -> np.ndarray:
    """A 12-bit image with structure: collimated field, soft tissue, five 'bones'."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    y /= rows
    x /= columns
    image = np.full((rows, columns), 300.0, dtype=np.float32)  # direct exposure
    soft = ((x - 0.5) / 0.38) ** 2 + ((y - 0.55) / 0.48) ** 2 < 1.0
    image[soft] = 1400.0
    for k in range(5):  # metacarpal-like bones, slightly rotated per image
        cx = 0.3 + 0.1 * k + 0.01 * index
        bone = ((x - cx) / 0.03) ** 2 + ((y - 0.5 - 0.04 * (k % 2)) / 0.3) ** 2 < 1.0
        cortex = ((x - cx) / 0.02) ** 2 + ((y - 0.5 - 0.04 * (k % 2)) / 0.28) ** 2 < 1.0
        image[bone] = 3000.0
        image[cortex] = 2500.0
    image += rng.normal(0.0, 40.0, image.shape).astype(np.float32)
    border = max(rows, columns) // 32  # collimator shutter
    image[:border, :] = image[-border:, :] = image[:, :border] = image[:, -border:] = 50.0
    return np.clip(image, 0, 4095).astype(np.uint16)


def cr_study(
    n_images: int = 4,
    *,
    patient: SamplePatient = DEMO_PATIENTS[0],
    body_part: str = "HAND",
    laterality: str = "L",
    view_positions: tuple[str, ...] = ("PA", "AP", "LL", "RL"),
    rows: int = 1024,
    columns: int = 1024,
    study_datetime: datetime | None = None,
    seed: str | None = None,
) -> list[Dataset]:
    """A Computed Radiography study of ``n_images`` images, one series per view.

    CR Image Storage (PS3.4 B.5, IOD PS3.3 A.2): 12-bit MONOCHROME2, Explicit
    VR Little Endian. ``seed`` makes the UIDs reproducible; by default each
    call is a new study. ``view_positions`` cycle over the images (View
    Position (0018,5101), PS3.3 C.8.1.1).
    """
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, not {n_images}")
    if not view_positions:
        raise ValueError("view_positions must name at least one view")
    when = study_datetime or datetime.combine(date.today(), time(9, 30))
    study_uid = _uid(seed, "study")
    accession = _accession("DEMOCR", study_uid)
    datasets = []
    for i in range(n_images):
        view = view_positions[i % len(view_positions)]
        ds = _base(
            patient,
            sop_class=ComputedRadiographyImageStorage,
            modality="CR",
            study_uid=study_uid,
            series_uid=_uid(seed, "series", i),
            when=when,
            accession=accession,
            study_description=f"XR {body_part} {laterality}",
        )
        ds.SOPInstanceUID = _uid(seed, "instance", i)
        ds.SeriesNumber = i + 1
        ds.SeriesDescription = f"{body_part} {view}"
        ds.Laterality = laterality
        # CR Series (C.8.1.1)
        ds.BodyPartExamined = body_part
        ds.ViewPosition = view
        # General Image (C.7.6.1)
        ds.InstanceNumber = 1
        ds.PatientOrientation = ["R", "F"] if view in ("PA", "AP") else ["A", "F"]
        ds.ContentDate = ds.StudyDate
        ds.ContentTime = ds.StudyTime
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.BurnedInAnnotation = "NO"
        # CR Image (C.8.1.2)
        ds.ImagerPixelSpacing = [0.1, 0.1]
        ds.KVP = 55
        ds.ExposureTime = 10
        ds.XRayTubeCurrent = 200
        # Image Pixel (C.7.6.3), VOI LUT (C.11.2)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = 2048
        ds.WindowWidth = 4096
        ds.PixelData = _radiograph(rows, columns, i).tobytes()
        datasets.append(_with_meta(ds))
    logger.debug("generated CR study with %d images", n_images)
    return datasets


class _ChestPhantom:
    """Hounsfield units of a contrast-enhanced chest, one axial slice at a time."""

    def __init__(self, size: int, seed: int) -> None:
        coords = (np.arange(size, dtype=np.float32) - size / 2) / (size / 2)
        self.y, self.x = np.meshgrid(coords, coords, indexing="ij")
        self.rng = np.random.default_rng(seed)

    def _ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 < 1.0

    def slice(self, fraction: float) -> np.ndarray:
        """HU at ``fraction`` (0 = top of the scan, 1 = bottom)."""
        hu = np.full(self.x.shape, -1000.0, dtype=np.float32)  # air
        hu[self._ellipse(0.0, 0.05, 0.8, 0.55)] = 40.0  # soft tissue
        lung = 0.25 + 0.15 * np.sin(np.pi * min(max(fraction, 0.0), 1.0))
        hu[self._ellipse(-0.38, 0.0, 0.28, lung + 0.1)] = -850.0
        hu[self._ellipse(0.38, 0.0, 0.28, lung + 0.1)] = -850.0
        hu[self._ellipse(0.0, 0.38, 0.09, 0.09)] = 700.0  # vertebra
        hu[self._ellipse(0.05, -0.05, 0.08, 0.08)] = 300.0  # contrast-filled vessels
        hu[self._ellipse(-0.08, 0.12, 0.05, 0.05)] = 320.0
        hu += np.asarray(self.rng.normal(0.0, 12.0, size=hu.shape), dtype=np.float32)
        return hu


def ct_series(  # called-by: bench/ingest.py
    n_slices: int = 300,
    *,
    patient: SamplePatient = DEMO_PATIENTS[2],
    size: int = 512,
    slice_thickness: float = 1.0,
    pixel_spacing: float = 0.7,
    study_datetime: datetime | None = None,
    seed: str | None = None,
) -> Iterator[Dataset]:
    """A contrast-enhanced chest CT series, one slice at a time.

    CT Image Storage (PS3.4 B.5, IOD PS3.3 A.3): ``size`` x ``size`` pixels,
    16 bits allocated, 12 stored, Rescale Intercept -1024 (C.8.2.1), axial
    slices ``slice_thickness`` apart with Image Plane geometry (C.7.6.2) and
    a Contrast/Bolus module (C.7.6.4). At the default size each instance
    is about 512 KB. Slices are generated lazily so that a 300-slice series
    needs the memory of one.
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be at least 1, not {n_slices}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, not {size}")
    when = study_datetime or datetime.combine(date.today(), time(14, 5))
    study_uid = _uid(seed, "ct-study")
    series_uid = _uid(seed, "ct-series")
    frame_uid = _uid(seed, "ct-frame")
    accession = _accession("DEMOCT", study_uid)
    phantom = _ChestPhantom(size, seed=len(seed or ""))
    origin = -size * pixel_spacing / 2
    for i in range(n_slices):
        ds = _base(
            patient,
            sop_class=CTImageStorage,
            modality="CT",
            study_uid=study_uid,
            series_uid=series_uid,
            when=when,
            accession=accession,
            study_description="CT THORAX ABDOMEN WITH CONTRAST",
        )
        ds.SOPInstanceUID = _uid(seed, "ct-instance", i)
        ds.SeriesNumber = 2
        ds.SeriesDescription = f"Thorax {slice_thickness:.1f} CE"
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.ProtocolName = "Oncology follow-up thorax-abdomen"
        # Frame of Reference (C.7.4.1)
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        # General Image (C.7.6.1), Image Plane (C.7.6.2)
        z = -i * slice_thickness
        ds.InstanceNumber = i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionNumber = 1
        ds.ContentDate = ds.StudyDate
        ds.ContentTime = ds.StudyTime
        ds.BurnedInAnnotation = "NO"
        ds.PixelSpacing = [pixel_spacing, pixel_spacing]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin, origin, z]
        ds.SliceThickness = slice_thickness
        ds.SliceLocation = z
        # Contrast/Bolus (C.7.6.4)
        ds.ContrastBolusAgent = "Iodinated contrast 350 mgI/ml"
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = 80
        # CT Image (C.8.2.1) and Image Pixel (C.7.6.3)
        ds.KVP = 120
        ds.ConvolutionKernel = "B30f"
        ds.XRayTubeCurrent = 180
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 100
        ds.WindowWidth = 700
        hu = phantom.slice(i / max(n_slices - 1, 1))
        ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
        yield _with_meta(ds)


def compressed(  # called-by: tests/peers and tests/demo (compressed samples for PACS round trips)
    ds: Dataset,
    transfer_syntax: UID = JPEG2000Lossless,
) -> Dataset:
    """A copy of ``ds`` re-encoded with a lossless compressed transfer syntax.

    Uses pydicom's encoders (pylibjpeg-openjpeg for JPEG 2000 Lossless,
    PS3.5 §A.4.4; pydicom itself for RLE Lossless, §A.4.2). The SOP Instance
    UID is kept: a lossless re-encoding is the same instance (PS3.5 §8.2).
    """
    if not transfer_syntax.is_compressed:
        raise ValueError(f"transfer_syntax {transfer_syntax} is not a compressed transfer syntax")
    copy = deepcopy(ds)
    copy.compress(transfer_syntax, generate_instance_uid=False)
    return copy


def write_study(datasets: Iterable[Dataset], folder: Path) -> list[Path]:
    """Write each dataset as ``<SOPInstanceUID>.dcm`` in ``folder``; paths in input order.

    Files are DICOM Part 10 (PS3.10 §7: preamble, ``DICM``, File Meta
    Information); datasets without file meta get Explicit VR Little Endian.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            _with_meta(ds)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
