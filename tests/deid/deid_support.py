"""Helpers for the pseudonymization tests: keys and generated instances (no real patients)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from aifi.deid import DeidOptions, Pseudonymizer

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def make_instance(
    *,
    patient_id: str = "PID-4711",
    name: str = "Doe^Jane",
    birth: str = "20120310",
    study_date: str = "20240506",
    study_uid: str | None = None,
    modality: str = "DX",
    sop_class: str = "1.2.840.10008.5.1.4.1.1.1.1",
    charset: str = "ISO_IR 100",
) -> Dataset:
    """A small DX instance with patient, study and series identity, and 4x4 pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth
    ds.PatientSex = "F"
    ds.PatientWeight = "31"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = "101112"
    ds.AccessionNumber = "ACC998877"
    ds.Modality = modality
    ds.BodyPartExamined = "HAND"
    ds.ViewPosition = "PA"
    ds.ImageLaterality = "L"
    ds.SeriesDescription = f"Hand PA {name.split('^')[0]} 4711"
    ds.StudyDescription = "Bone age"
    ds.InstitutionName = "St Elsewhere"
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(range(32))
    return ds


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def pseudonymize(ds: Dataset, **kwargs: object) -> Dataset:
    """Pseudonymize ``ds`` with the test key through a file, and read the result back."""
    key = kwargs.pop("key", KEY)
    options = kwargs.pop("options", DeidOptions())
    pseudonymizer = Pseudonymizer(key, options=options, **kwargs)  # type: ignore[arg-type]
    result = pseudonymizer.pseudonymize_dataset(ds)
    assert result.dataset is not None
    return result.dataset


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)
