"""Generated DICOM for the pseudonymization tests and benchmark (no real patient data).

* :func:`planted_dataset` — an instance with a unique, recognisable
  identifier planted in every attribute of Table E.1-1 that can carry one,
  again inside nested sequence items, in private blocks and in attributes
  the table does not list, in the character set asked for (ISO_IR 100 or
  ISO_IR 192). :attr:`Planted.markers` lists the encoded byte strings that
  must not survive pseudonymization.
* :func:`planted_file` — the same written as a file, then given what pydicom
  would not write: sequences sent as UN (defined and undefined length), tags
  present twice, elements after Pixel Data, identity in the File Meta
  Information, names in safe-listed text and in attributes an algorithm may
  ask for.
* :func:`radiograph` and :func:`ct_series` — realistic-size images for the
  benchmark (a ~10 MB DX radiograph, a 512 x 512 CT series).
"""

from __future__ import annotations

import datetime as dt
import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from aifi.deid.profile import load_profile
from aifi.dicom.encode import encode_element
from aifi.dicom.walker import Walker

__all__ = ["CHARSETS", "Planted", "ct_series", "planted_dataset", "planted_file", "radiograph"]

_HH = struct.Struct("<HH")
_HHI = struct.Struct("<HHI")
_H = struct.Struct("<H")
_I = struct.Struct("<I")
_CT = "1.2.840.10008.5.1.4.1.1.2"
_DX = "1.2.840.10008.5.1.4.1.1.1.1"
_PLANTABLE = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE", "DA", "DT", "UI", "UR"}
_NAMES = {
    "ISO_IR 100": "Müller^Jürgen",
    "ISO_IR 144": "Иванов^Пётр",
    "ISO_IR 192": "Ωμέγα^Jürgen李",
}
_STREETS = {"ISO_IR 100": "Hauptstraße", "ISO_IR 144": "Тверская", "ISO_IR 192": "Hauptstraße"}
#: The character sets a planted corpus can be written in.
CHARSETS = tuple(_NAMES)


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
        return f"{prefix}{n:04d} {_NAMES[charset]} {_STREETS[charset]} 5"
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
            planted.markers[name + "/street"] = _STREETS[charset].encode(encoding)
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


def _implicit_item(elements: list[bytes], *, undefined: bool) -> bytes:
    body = b"".join(elements)
    if undefined:
        return _HHI.pack(0xFFFE, 0xE000, 0xFFFFFFFF) + body + _HHI.pack(0xFFFE, 0xE00D, 0)
    return _HHI.pack(0xFFFE, 0xE000, len(body)) + body


def _un(tag: int, value: bytes, *, undefined: bool = False) -> bytes:
    """An explicit VR element with VR UN (PS3.5 6.2.2), of defined or undefined length."""
    head = _HH.pack(tag >> 16, tag & 0xFFFF) + b"UN\0\0"
    if undefined:
        return head + _I.pack(0xFFFFFFFF) + value + _HHI.pack(0xFFFE, 0xE0DD, 0)
    return head + _I.pack(len(value)) + value


def planted_file(  # called-by: tests/e2e/test_planted_path.py (a corpus generator)
    path: Path, charset: str = "ISO_IR 192", transfer_syntax: str = ExplicitVRLittleEndian
) -> Planted:
    """Write a planted instance to ``path`` with the byte-level hiding places added."""
    planted = planted_dataset(charset)
    ds, markers = planted.dataset, planted.markers
    encoding = pydicom.charset.python_encoding[charset]
    surname = _NAMES[charset].split("^")[0]
    implicit = transfer_syntax == ImplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.SourceApplicationEntityTitle = "FMETAAE0001"
    ds.file_meta.ImplementationVersionName = "FMETAIVN01"
    ds.file_meta.add_new(0x00020102, "OB", b"FMETAPRIV01\0")
    markers.update(
        {"meta-ae": b"FMETAAE0001", "meta-ivn": b"FMETAIVN01", "meta-private": b"FMETAPRIV01"}
    )
    profile = load_profile()
    for n, tag in enumerate(sorted(profile.text), start=1):  # safe-listed text, with a name
        value = f"SAFE{n:04d} {surname}" if profile.text[tag] == "vocabulary" else f"SAFE{n:04d}"
        ds.add_new(tag, str(dictionary_VR(tag)), value)
        markers[f"safe-text-{keyword_for_tag(tag)}"] = f"SAFE{n:04d}".encode()
    for n, tag in enumerate(sorted(profile.on_request), start=1):  # asked for by an algorithm
        ds.add_new(tag, str(dictionary_VR(tag)), f"ONRQ{n:04d}")
        markers[f"on-request-{keyword_for_tag(tag)}"] = f"ONRQ{n:04d}".encode()
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator = "T-D8800", "SRT"
    region.CodeMeaning = f"Hand CODEM0001 {surname}"
    ds.AnatomicRegionSequence = Sequence([region])
    markers["code-meaning"] = b"CODEM0001"
    raw = _to_bytes(ds)
    start = _dataset_start(raw)
    reader = Walker(raw, implicit=implicit)
    chunks = [(e.tag, raw[e.start : e.vend]) for e in reader.elements(start, len(raw))]

    def text(tag: int, vr: str, value: str) -> bytes:
        return encode_element(tag, vr, value.encode(encoding), implicit=implicit)

    # a second copy of a tag right after the first: a reader keeping one sees the other
    extra = [
        (0x00080070, text(0x00080070, "LO", f"DUP0001 {surname}")),  # Manufacturer
        (0x00080080, text(0x00080080, "LO", "DUP0002 Hospital")),  # Institution Name
        (0x00100010, text(0x00100010, "PN", f"{surname}^DUP0003")),  # Patient's Name
        (0x00080060, text(0x00080060, "CS", "DUP0004")),  # Modality
    ]
    markers.update({f"duplicate#{i}": f"DUP000{i}".encode() for i in range(1, 5)})
    if not implicit:
        nested_uid = "1.2.826.0.1.3680043.10.543.777.1"
        inner = [
            encode_element(
                0x00080104, "LO", b"UNSEQ0001 " + surname.encode(encoding), implicit=True
            ),
            encode_element(0x00081155, "UI", nested_uid.encode(), implicit=True),
            encode_element(0x00100010, "PN", b"UNNAME0001^X", implicit=True),
        ]
        extra.append((0x00540220, _un(0x00540220, _implicit_item(inner, undefined=False))))
        inner_undefined = [
            encode_element(0x00080104, "LO", b"UNSEQ0002", implicit=True),
            encode_element(0x00100020, "LO", b"UNID0002", implicit=True),
        ]
        extra.append(
            (
                0x00209222,
                _un(0x00209222, _implicit_item(inner_undefined, undefined=True), undefined=True),
            )
        )
        extra.append((0x00081090, _un(0x00081090, f"UNMODEL1 {surname} ".encode(encoding))))
        markers.update(
            {
                "un-defined-text": b"UNSEQ0001",
                "un-defined-uid": nested_uid.encode(),
                "un-defined-name": b"UNNAME0001",
                "un-undefined-text": b"UNSEQ0002",
                "un-undefined-id": b"UNID0002",
                "un-value": b"UNMODEL1",
            }
        )
    ordered = sorted(chunks + extra, key=lambda chunk: chunk[0])  # stable: copies after originals
    after = [  # after Pixel Data and the Digital Signatures Sequence (FFFA,FFFA) planted above
        text(0x00104000, "LT", f"AFTERPX0001 {surname}"),  # Patient Comments, out of order
        encode_element(0xFFFCFFFC, "OB", b"AFTERPAD0001", implicit=implicit),  # padding
    ]
    markers.update({"after-pixel-comments": b"AFTERPX0001", "after-pixel-padding": b"AFTERPAD0001"})
    body = raw[:start] + b"".join(c for _, c in ordered) + b"".join(after)
    Path(path).write_bytes(body)
    return planted


def _to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dataset_start(raw: bytes) -> int:
    pos = 132
    while pos + 8 <= len(raw) and _H.unpack_from(raw, pos)[0] == 0x0002:
        pos = Walker(raw, implicit=False).element_at(pos).vend
    return pos


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


def radiograph(  # called-by: bench/pseudonymize.py
    path: Path,
    *,
    rows: int = 2500,
    cols: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a DX radiograph (~10 MB at the default size) to ``path``."""
    ds = _image(_DX, rows, cols, seed)
    ds.BodyPartExamined = "HAND"
    ds.ViewPosition = "PA"
    ds.ImageLaterality = "L"
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_series(  # called-by: bench/pseudonymize.py
    folder: Path,
    *,
    slices: int = 300,
    rows: int = 512,
    cols: int = 512,
) -> list[Path]:
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
