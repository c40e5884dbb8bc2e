"""Shared DICOM modules for phantom instances (synthetic patients only).

Every phantom instance carries the Patient, General Study, General Series,
General Equipment, General Image, Image Pixel and SOP Common modules
(PS3.3 C.7, C.12.1) with a synthetic identity, so that the edge's
pseudonymizer has something real to replace.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

__all__ = ["StudyContext", "dicom_age", "new_instance", "set_pixels"]

_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, used for generated UIDs


def dicom_age(months: float) -> str:
    """Age String (AS, PS3.5 6.2): nnnD/W/M/Y, months below 2 years, years above."""
    if months < 0:
        raise ValueError("age in months must not be negative")
    if months < 24:
        return f"{round(months):03d}M"
    return f"{int(months // 12):03d}Y"


@dataclass
class StudyContext:
    """The synthetic patient and study an instance belongs to."""

    patient_name: str = "PHANTOM^TEST"
    patient_id: str = "PHANTOM-0001"
    patient_sex: str = "O"
    age_months: float = 40 * 12
    study_date: dt.date = field(default_factory=lambda: dt.date(2026, 1, 15))
    study_instance_uid: str = field(default_factory=lambda: generate_uid(_UID_ROOT))
    accession_number: str = "PH0001"
    study_description: str = "PHANTOM"
    referring_physician: str = "REFERRER^PHANTOM"

    @property
    def birth_date(self) -> dt.date:
        return self.study_date - dt.timedelta(days=round(self.age_months * 30.4375))


def new_instance(
    study: StudyContext,
    *,
    sop_class_uid: str,
    modality: str,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    series_description: str,
) -> pydicom.FileDataset:
    """An instance with the common modules filled; pixel data comes from :func:`set_pixels`."""
    sop_instance_uid = UID(generate_uid(_UID_ROOT))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    date = study.study_date.strftime("%Y%m%d")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "101500"
    ds.AccessionNumber = study.accession_number
    ds.Modality = modality
    ds.Manufacturer = "aifi phantom"
    ds.InstitutionName = "PHANTOM HOSPITAL"
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyDescription = study.study_description
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "aifi.phantoms"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date.strftime("%Y%m%d")
    ds.PatientSex = study.patient_sex
    ds.PatientAge = dicom_age(study.age_months)
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.BurnedInAnnotation = "NO"
    return ds


def set_pixels(
    ds: pydicom.Dataset, pixels: np.ndarray, *, bits_stored: int, signed: bool = False
) -> None:
    """Image Pixel module (PS3.3 C.7.6.3) for one grayscale frame or a stack of frames."""
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    rows, cols = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    dtype = np.int16 if signed else np.uint16
    ds.PixelData = np.ascontiguousarray(pixels.astype(dtype)).tobytes()
