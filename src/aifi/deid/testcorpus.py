"""Generated DICOM for the pseudonymization tests and benchmark (no real patient data).

* :func:`planted_dataset` — an instance with a unique, recognisable
  identifier planted in every attribute of Table E.1-1 that can carry one,
  again inside nested sequence items, in private blocks and in attributes
  the table does not list, in the character set asked for (ISO_IR 100 or
  ISO_IR 192). :attr:`Planted.markers` lists the encoded byte strings that
  must not survive pseudonymization.
* :func:`radiograph` and :func:`ct_series` — realistic-size images for the
  benchmark (a ~10 MB DX radiograph, a 512 x 512 CT series).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from aifi.deid.profile import load_profile

__all__ = ["Planted", "ct_series", "planted_dataset", "radiograph"]

_CT = "1.2.840.10008.5.1.4.1.1.2"
_DX = "1.2.840.10008.5.1.4.1.1.1.1"
_PLANTABLE = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE", "DA", "DT", "UI", "UR"}
_NAMES = {
    "ISO_IR 100": "Müller^Jürgen",
    "ISO_IR 192": "Ωμέγα^Jürgen李",
}


@dataclass
class Planted:
    """A dataset with planted identifiers, and the encoded markers to search for."""

    dataset: Dataset
    markers: dict[str, bytes] = field(default_factory=dict)


def _base(sop_class: str, charset: str, rows: int, cols: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "CT" if sop_class == _CT else "DX"
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [0.5, 0.5]
    return ds


def _value(vr: str, n: int, charset: str, prefix: str) -> str:
    if vr == "PN":
        return f"{_NAMES[charset]}{n}^{prefix}{n:04d}"
    if vr == "DA":
        return f"{1901 + n % 97:04d}{1 + n % 12:02d}{1 + n % 28:02d}"
    if vr == "DT":
        return f"{1901 + n % 97:04d}{1 + n % 12:02d}{1 + n % 28:02d}101112"
    if vr == "UI":
        return f"1.2.826.0.1.3680043.10.543.{n}.{len(prefix)}"
    if vr in {"LT", "ST", "UT", "UC"}:
        return f"{prefix}{n:04d} {_NAMES[charset]} Hauptstraße 5"
    return f"{prefix}{n:04d}"


def planted_dataset(charset: str = "ISO_IR 192", *, rows: int = 8, cols: int = 8) -> Planted:
    """A CT instance with a planted identifier in every plantable Table E.1-1 attribute."""
    ds = _base(_CT, charset, rows, cols)
    planted = Planted(ds)
    encoding = pydicom.charset.python_encoding[charset]
    n = 0

    def plant(target: Dataset, tag: int, vr: str, prefix: str) -> None:
        nonlocal n
        n += 1
        value = _value(vr, n, charset, prefix)
        target.add_new(tag, vr, value)
        name = f"{keyword_for_tag(tag) or hex(tag)}#{n}"
        if vr == "PN":
            planted.markers[name] = value.split("^")[0].encode(encoding)
            planted.markers[name + "/id"] = f"{prefix}{n:04d}".encode()
        elif vr in {"DA", "DT"}:
            planted.markers[name] = value[:8].encode()
        elif vr in {"LT", "ST", "UT", "UC"}:
            planted.markers[name] = f"{prefix}{n:04d}".encode()
            planted.markers[name + "/street"] = "Hauptstraße".encode(encoding)
        else:
            planted.markers[name] = value.encode(encoding)

    profile = load_profile()
    nested_tags = []
    for tag, rule in sorted(profile.rules.items()):
        if rule.tag.lower().find("x") >= 0 or tag >> 16 in (0x0000, 0x0002, 0x0004):
            continue
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            continue
        if vr == "SQ":
            nested_tags.append(tag)
        elif vr in _PLANTABLE and tag not in (0x00080018, 0x0020000D, 0x0020000E, 0x00080016):
            plant(ds, tag, vr, "PLT")
    # every listed sequence gets an item carrying identifiers of its own
    for tag in nested_tags:
        item = Dataset()
        plant(item, 0x00100010, "PN", "SEQ")  # Patient's Name inside
        plant(item, 0x00100020, "LO", "SEQ")  # Patient ID inside
        plant(item, 0x00081155, "UI", "SEQ")  # Referenced SOP Instance UID inside
        ds.add_new(tag, "SQ", Sequence([item]))
    # identifiers nested two levels deep inside a safe-listed sequence
    inner = Dataset()
    plant(inner, 0x00100010, "PN", "DEEP")
    plant(inner, 0x00081030, "LO", "DEEP")  # Study Description
    plant(inner, 0x00181030, "LO", "DEEP")  # Protocol Name
    middle = Dataset()
    middle.PixelMeasuresSequence = Sequence([inner])
    ds.SharedFunctionalGroupsSequence = Sequence([middle])
    # private blocks, top level and nested
    block = ds.private_block(0x0009, "ACME IDENTITY 1.0", create=True)
    n += 1
    block.add_new(0x01, "LO", f"PRV{n:04d}")
    planted.markers[f"private#{n}"] = f"PRV{n:04d}".encode()
    block.add_new(0x02, "PN", _NAMES[charset] + "PRV")
    planted.markers["private-name"] = (_NAMES[charset] + "PRV").split("^")[0].encode(encoding)
    ds.SharedFunctionalGroupsSequence[0].add_new(0x00290010, "LO", "ACME NESTED")
    ds.SharedFunctionalGroupsSequence[0].add_new(0x00291001, "LO", "PRVNESTED")
    planted.markers["private-nested"] = b"PRVNESTED"
    # attributes the table does not list and that are not safe: removed too
    plant(ds, 0x00181010, "LO", "UNL")  # Secondary Capture Device ID
    plant(ds, 0x00081000, "AE", "RET")  # Network ID (retired)
    plant(ds, 0x00102201, "LO", "UNL")  # Patient Species Description
    ds.add_new(0x77770010, "LO", "UNKNOWNEVEN")
    planted.markers["unknown-even"] = b"UNKNOWNEVEN"
    ds.PixelData = np.arange(rows * cols, dtype=np.uint16).tobytes()
    return planted


def _image(sop_class: str, rows: int, cols: int, seed: int) -> Dataset:
    ds = _base(sop_class, "ISO_IR 100", rows, cols)
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = "SYN0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = dt.date(2024, 5, 6).strftime("%Y%m%d")
    ds.StudyTime = "101112"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = "Doctor^Referring"
    ds.InstitutionName = "General Hospital"
    ds.StationName = "STATION1"
    ds.StudyDescription = "Synthetic study"
    ds.SeriesDescription = "Synthetic series"
    ds.Manufacturer = "ACME"
    ds.KVP = "120"
    ds.SliceThickness = "1.0"
    block = ds.private_block(0x0019, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "private value")
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, size=(rows, cols), dtype=np.uint16).tobytes()
    return ds


def radiograph(path: Path, *, rows: int = 2500, cols: int = 2048, seed: int = 0) -> Path:
    """Write a DX radiograph (~10 MB at the default size) to ``path``."""
    ds = _image(_DX, rows, cols, seed)
    ds.BodyPartExamined = "HAND"
    ds.ViewPosition = "PA"
    ds.ImageLaterality = "L"
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_series(folder: Path, *, slices: int = 300, rows: int = 512, cols: int = 512) -> list[Path]:
    """Write a CT series of ``slices`` instances into ``folder``; the pixel data is shared."""
    folder.mkdir(parents=True, exist_ok=True)
    first = _image(_CT, rows, cols, 1)
    paths = []
    for i in range(slices):
        ds = first.copy()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        path = folder / f"ct{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
