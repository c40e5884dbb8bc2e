"""Direct STOW-RS with a valid hospital token: every identity-bearing variant is refused, unstored.

The hub does not trust the edge. One clean instance is pseudonymized by the
real edge pseudonymizer; each variant below puts one identity back into it,
in the header, in a sequence, in a sequence sent as UN, after Pixel Data,
in a second copy of a tag (pydicom keeps only one) or in the File Meta
Information. Each carries a unique marker. All are sent in one request with
the clean instance: the clean one is stored; every variant is refused with
Failure Reason 0110 and a recorded reason naming the attribute, never the
marker; no byte of the hub's data folder (store, staging, database) holds a
marker.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from aifi.deid import Pseudonymizer
from aifi.dicom.encode import encode_element
from aifi.hub.db import make_engine, make_sessions
from aifi.hub.models import Instance, Refusal

from .conftest import Hub, database_contents, new_uid

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
_PIXEL_TAG = b"\xe0\x7f\x10\x00"

#: What a Variant does to the clean data set (pydicom level) or to its bytes.
Edit = Callable[[Dataset, str], None]
ByteEdit = Callable[[bytes, str], bytes]


def _item(**attributes: str) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _set(keyword: str, value: str) -> Edit:
    """Set ``keyword`` to ``value`` (with the marker in place of ``{m}``)."""
    return lambda ds, m: setattr(ds, keyword, value.format(m=m))


def _nested(sequence: str, **attributes: str) -> Edit:
    def edit(ds: Dataset, m: str) -> None:
        setattr(
            ds, sequence, Sequence([_item(**{k: v.format(m=m) for k, v in attributes.items()})])
        )

    return edit


def _private(ds: Dataset, m: str) -> None:
    ds.private_block(0x0029, "HOSPITAL IDENTITY", create=True).add_new(0x10, "LO", m)


def _element(tag: int, vr: str, m: str) -> bytes:
    return encode_element(tag, vr, m.encode(), implicit=False)


def _after_pixels(tag: int, vr: str) -> ByteEdit:
    return lambda raw, m: raw + _element(tag, vr, m)


def _twice(tag: int, vr: str, value: str) -> ByteEdit:
    """A second copy of ``tag`` right after the first (PS3.5 7.1 forbids it; pydicom keeps one)."""

    def edit(raw: bytes, m: str) -> bytes:
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
        at = raw.index(head)
        (length,) = struct.unpack_from("<H", raw, at + 6)
        end = at + 8 + length
        return raw[:end] + _element(tag, vr, value.format(m=m)) + raw[end:]

    return edit


def _before_pixels(chunk: Callable[[str], bytes]) -> ByteEdit:
    def edit(raw: bytes, m: str) -> bytes:
        at = raw.rindex(_PIXEL_TAG)
        return raw[:at] + chunk(m) + raw[at:]

    return edit


def _un_sequence(*, undefined: bool) -> Callable[[str], bytes]:
    """View Code Sequence (0054,0220) sent as UN, its item implicit VR, a name inside."""

    def chunk(m: str) -> bytes:
        inner = encode_element(0x00100010, "PN", f"Doe^{m}".encode(), implicit=True)
        if undefined:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner
            item += struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
            return b"\x54\x00\x20\x02UN\x00\x00" + b"\xff\xff\xff\xff" + item + end
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        return b"\x54\x00\x20\x02UN\x00\x00" + struct.pack("<I", len(item)) + item

    return chunk


def _meta(keyword: str, value: str) -> Edit:
    return lambda ds, m: setattr(ds.file_meta, keyword, value.format(m=m))


def _meta_private(ds: Dataset, m: str) -> None:
    ds.file_meta.PrivateInformationCreatorUID = "2.25.1"
    ds.file_meta.PrivateInformation = m.encode()


def _meta_uid(raw: bytes, m: str) -> bytes:
    """Media Storage SOP Instance UID (0002,0003) an original UID (pydicom would rewrite it)."""
    at = raw.index(b"\x02\x00\x03\x00UI")
    (length,) = struct.unpack_from("<H", raw, at + 6)
    original = f"1.2.826.0.1.3680043.10.543.{m}".ljust(length, "1")[:length].encode()
    return raw[: at + 8] + original + raw[at + 8 + length :]


def _unmark(ds: Dataset, m: str) -> None:
    ds.PatientIdentityRemoved = "NO"
    ds.ImageComments = m


#: case -> (edit of the data set, edit of its bytes, keyword the reason must name)
CASES: dict[str, tuple[Edit | None, ByteEdit | None, str]] = {
    "image comments": (_set("ImageComments", "seen by {m}"), None, "ImageComments"),
    "patient comments": (_set("PatientComments", "{m} allergic"), None, "PatientComments"),
    "study comments": (_set("StudyComments", "{m}"), None, "StudyComments"),
    "patient history": (_set("AdditionalPatientHistory", "{m}"), None, "AdditionalPatientHistory"),
    "real study date": (_set("StudyDate", "20240506"), None, "StudyDate"),
    "real series date": (_set("SeriesDate", "20240506"), None, "SeriesDate"),
    "real content date": (_set("ContentDate", "20240506"), None, "ContentDate"),
    "real acquisition datetime": (
        _set("AcquisitionDateTime", "20240506101112"),
        None,
        "AcquisitionDateTime",
    ),
    "birth date": (_set("PatientBirthDate", "20120310"), None, "PatientBirthDate"),
    "institution": (_set("InstitutionName", "{m} Hospital"), None, "InstitutionName"),
    "institution address": (_set("InstitutionAddress", "{m} road"), None, "InstitutionAddress"),
    "department": (
        _set("InstitutionalDepartmentName", "{m}"),
        None,
        "InstitutionalDepartmentName",
    ),
    "station": (_set("StationName", "{m}"), None, "StationName"),
    "study description": (_set("StudyDescription", "Hand {m}"), None, "StudyDescription"),
    "series description": (_set("SeriesDescription", "Hand PA {m}"), None, "SeriesDescription"),
    "protocol name": (_set("ProtocolName", "{m} protocol"), None, "ProtocolName"),
    "manufacturer with a name": (_set("Manufacturer", "{m} Medical"), None, "Manufacturer"),
    "model name": (_set("ManufacturerModelName", "{m}"), None, "ManufacturerModelName"),
    "stack id": (_set("StackID", "{m}"), None, "StackID"),
    "code meaning": (
        _nested(
            "AnatomicRegionSequence",
            CodeValue="T-D8800",
            CodingSchemeDesignator="SRT",
            CodeMeaning="Hand of {m}",
        ),
        None,
        "CodeMeaning",
    ),
    "referring physician": (_set("ReferringPhysicianName", "{m}^Doc"), None, "ReferringPhysician"),
    "performing physician": (
        _set("PerformingPhysicianName", "{m}^Doc"),
        None,
        "PerformingPhysicianName",
    ),
    "operator": (_set("OperatorsName", "{m}^Op"), None, "OperatorsName"),
    "other patient ids": (_set("OtherPatientIDs", "{m}"), None, "OtherPatientIDs"),
    "patient address": (_set("PatientAddress", "{m} street 5"), None, "PatientAddress"),
    "patient telephone": (
        _set("PatientTelephoneNumbers", "{m}"),
        None,
        "PatientTelephoneNumbers",
    ),
    "issuer of patient id": (_set("IssuerOfPatientID", "{m}"), None, "IssuerOfPatientID"),
    "hospital accession number": (_set("AccessionNumber", "{m}"), None, "AccessionNumber"),
    "hospital patient id": (_set("PatientID", "{m}"), None, "PatientID"),
    "patient name": (_set("PatientName", "Doe^{m}"), None, "PatientName"),
    "device serial number": (_set("DeviceSerialNumber", "{m}"), None, "DeviceSerialNumber"),
    "private block": (_private, None, "private attributes"),
    "original nested uid": (
        _nested(
            "ReferencedImageSequence",
            ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.1.1",
            ReferencedSOPInstanceUID="1.2.826.0.1.3680043.10.543.{m}",
        ),
        None,
        "ReferencedSOPInstanceUID",
    ),
    "original frame of reference uid": (
        _set("FrameOfReferenceUID", "1.2.826.0.1.3680043.10.543.{m}"),
        None,
        "FrameOfReferenceUID",
    ),
    "burned in annotation": (_set("BurnedInAnnotation", "YES"), None, "BurnedInAnnotation"),
    "recognizable face": (
        _set("RecognizableVisualFeatures", "YES"),
        None,
        "RecognizableVisualFeatures",
    ),
    "attribute on no list": (
        _set("SecondaryCaptureDeviceID", "{m}"),
        None,
        "SecondaryCaptureDeviceID",
    ),
    "requested coded string with a name": (
        _set("BodyPartExamined", "{m}"),
        None,
        "BodyPartExamined",
    ),
    "name in content sequence": (
        _nested("ContentSequence", PersonName="{m}^X"),
        None,
        "PersonName",
    ),
    "other ids sequence": (
        _nested("OtherPatientIDsSequence", PatientID="{m}"),
        None,
        "OtherPatientIDsSequence",
    ),
    "identity marks missing": (_unmark, None, "PatientIdentityRemoved"),
    "data after pixel data": (None, _after_pixels(0x00104000, "LT"), "PatientComments"),
    "padding after pixel data": (None, _after_pixels(0xFFFCFFFC, "OB"), "DataSetTrailingPadding"),
    "duplicate tag hiding a name": (None, _twice(0x00100010, "PN", "Doe^{m}"), "PatientName"),
    "duplicate coded string": (None, _twice(0x00080060, "CS", "{m}"), "Modality"),
    "sequence as UN, defined length": (
        None,
        _before_pixels(_un_sequence(undefined=False)),
        "PatientName",
    ),
    "sequence as UN, undefined length": (
        None,
        _before_pixels(_un_sequence(undefined=True)),
        "PatientName",
    ),
    "file meta source AE title": (
        _meta("SourceApplicationEntityTitle", "{m}"),
        None,
        "SourceApplicationEntityTitle",
    ),
    "file meta implementation name": (
        _meta("ImplementationVersionName", "{m}"),
        None,
        "ImplementationVersionName",
    ),
    "file meta private information": (_meta_private, None, "PrivateInformation"),
    "file meta original instance uid": (None, _meta_uid, "MediaStorageSOPInstanceUID"),
}


def _marker(n: int) -> str:
    return f"HOSTILE{n:03d}"


def _numeric_marker(n: int) -> str:
    return f"{100 + n}0471104711"  # for UIDs: digits only, too long to occur by chance


@pytest.fixture
def clean(tmp_path: Path) -> Dataset:
    """A DX radiograph pseudonymized by the edge's own pseudonymizer (fracture keep list)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-4711", "20120310"
    ds.StudyDate = ds.ContentDate = "20240506"
    ds.AccessionNumber, ds.InstitutionName = "ACC998877", "St Elsewhere"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "HAND", "PA"
    ds.Manufacturer, ds.BurnedInAnnotation = "ACME", "NO"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(range(32))
    src = tmp_path / "original.dcm"
    ds.save_as(src, enforce_file_format=True)
    keep = ("BodyPartExamined", "ViewPosition", "ImageLaterality")
    Pseudonymizer(bytes(range(32)), keep=keep).pseudonymize_file(src, tmp_path / "clean.dcm")
    return pydicom.dcmread(tmp_path / "clean.dcm")


def _variant(clean: Dataset, study: str, n: int, case: str) -> tuple[str, str, bytes]:
    """(SOP Instance UID, marker, file bytes) of variant ``n``."""
    edit, byte_edit, _keyword = CASES[case]
    marker = _numeric_marker(n) if "uid" in case else _marker(n)
    ds = copy.deepcopy(clean)
    ds.StudyInstanceUID = study
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    sop = ds.SOPInstanceUID
    if edit is not None:
        edit(ds, marker)
    buffer = pydicom.filebase.DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    if byte_edit is not None:
        raw = byte_edit(raw, marker)
    return sop, marker, raw


def _everything_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_every_identity_bearing_variant_is_refused_and_nothing_of_it_stored(
    hub: Hub, token_a: str, clean: Dataset, tmp_path: Path
) -> None:
    study = new_uid()
    variants = {case: _variant(clean, study, n, case) for n, case in enumerate(CASES, start=1)}
    clean_path = tmp_path / "clean-sent.dcm"
    clean.StudyInstanceUID = study
    clean.save_as(clean_path, enforce_file_format=True)
    files = [clean_path]
    for _sop, _marker_value, raw in variants.values():
        path = tmp_path / f"variant-{len(files):03d}.dcm"
        path.write_bytes(raw)
        files.append(path)
    assert len(CASES) >= 40

    response = hub.stow(token_a, files)

    assert response.status_code == 202  # the clean instance stored, every variant failed
    body = response.json()
    stored = [item["00081155"]["Value"][0] for item in body[REFERENCED_SOP_SEQUENCE]["Value"]]
    wrongly = [case for case, (sop, _m, _r) in variants.items() if sop in stored]
    assert wrongly == []
    assert stored == [str(clean.SOPInstanceUID)]
    failed = {
        item["00081155"]["Value"][0]: item["00081197"]["Value"][0]
        for item in body[FAILED_SOP_SEQUENCE]["Value"]
        if "00081155" in item
    }
    reasons, stored_uids = _recorded(hub)
    refused = []
    for case, (sop, marker, _raw) in variants.items():
        keyword = CASES[case][2]
        assert failed.get(sop) == 0x0110, case
        assert keyword in reasons[sop], (case, reasons[sop])
        assert marker not in reasons[sop], case  # the attribute is named, never the value
        refused.append(case)
    assert stored_uids == {str(clean.SOPInstanceUID)}
    assert len(refused) == len(CASES)
    data = _everything_under(hub.settings.data_dir)  # store, staging, SQLite database
    data += database_contents(hub.settings)  # PostgreSQL: everything the database holds
    assert [c for c, (_s, marker, _r) in variants.items() if marker.encode() in data] == []
    assert [p for p in (hub.settings.data_dir / "tmp").rglob("*") if p.is_file()] == []  # staging


def _recorded(hub: Hub) -> tuple[dict[str | None, str], set[str]]:
    """The hub's refusals (SOP Instance UID -> reason) and the instances it stored."""
    engine = make_engine(hub.settings.effective_database_url)
    try:
        with make_sessions(engine)() as session:
            reasons = {r.sop_instance_uid: r.reason for r in session.scalars(select(Refusal))}
            return reasons, set(session.scalars(select(Instance.sop_instance_uid)))
    finally:
        engine.dispose()
