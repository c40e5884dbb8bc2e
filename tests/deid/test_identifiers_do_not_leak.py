"""A corpus with identifiers planted everywhere: a byte-level scan of the output finds none."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from deid_support import KEY
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from aifi.deid import Pseudonymizer, check_deidentified
from aifi.deid.testcorpus import planted_dataset


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_file_output_holds_no_planted_identifier(
    tmp_path: Path, charset: str, transfer_syntax: str
) -> None:
    planted = planted_dataset(charset)
    planted.dataset.file_meta.TransferSyntaxUID = transfer_syntax
    src = tmp_path / "in.dcm"
    planted.dataset.save_as(src, enforce_file_format=True)
    raw_in = src.read_bytes()
    assert all(marker in raw_in for marker in planted.markers.values())  # the scan can see them

    Pseudonymizer(KEY).pseudonymize_file(src, tmp_path / "out.dcm")

    raw_out = (tmp_path / "out.dcm").read_bytes()
    leaked = sorted(name for name, marker in planted.markers.items() if marker in raw_out)
    assert leaked == []
    assert len(planted.markers) > 500


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_in_memory_output_holds_no_planted_identifier(charset: str) -> None:
    planted = planted_dataset(charset)
    result = Pseudonymizer(KEY).pseudonymize_dataset(planted.dataset)
    assert result.dataset is not None
    raw_out = pydicom.filebase.DicomBytesIO()
    result.dataset.save_as(raw_out, enforce_file_format=True)
    leaked = [n for n, m in planted.markers.items() if m in raw_out.getvalue()]
    assert leaked == []


def test_output_passes_the_hubs_check_and_keeps_pixels(tmp_path: Path) -> None:
    planted = planted_dataset("ISO_IR 192")
    src = tmp_path / "in.dcm"
    planted.dataset.save_as(src, enforce_file_format=True)
    Pseudonymizer(KEY).pseudonymize_file(src, tmp_path / "out.dcm")
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert check_deidentified(out) == []
    assert out.PixelData == planted.dataset.PixelData
    assert not any(elem.tag.is_private for elem in out.iterall())
    assert 0x77770010 not in out  # an unknown attribute is removed
    assert "SecondaryCaptureDeviceID" not in out  # not in the table, not safe: removed
    assert out.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].get("PatientName") in (
        None,
        "",
    )


def test_uids_are_replaced_everywhere_and_listed(tmp_path: Path) -> None:
    planted = planted_dataset("ISO_IR 100")
    original_uids = {
        str(e.value)
        for e in planted.dataset.iterall()
        if e.VR == "UI" and e.keyword not in ("SOPClassUID", "ReferencedSOPClassUID")
    }
    result = Pseudonymizer(KEY).pseudonymize_dataset(planted.dataset)
    assert result.dataset is not None
    out_uids = {str(e.value) for e in result.dataset.iterall() if e.VR == "UI" and e.value}
    assert not (original_uids & out_uids)
    assert result.uid_map[str(planted.dataset.SOPInstanceUID)] == result.sop_instance_uid
    assert set(result.uid_map.values()) <= {u for u in out_uids if u.startswith("2.25.")} | set(
        result.uid_map.values()
    )


def test_file_meta_of_the_source_is_not_carried_over(tmp_path: Path) -> None:
    from deid_support import make_instance, write

    ds = make_instance()
    ds.file_meta.SourceApplicationEntityTitle = "STJOHNS_PACS"
    ds.file_meta.ImplementationVersionName = "STJOHNS_1"
    src = write(ds, tmp_path / "in.dcm")
    Pseudonymizer(KEY).pseudonymize_file(src, tmp_path / "out.dcm")
    raw = (tmp_path / "out.dcm").read_bytes()
    assert b"STJOHNS" not in raw
    meta = pydicom.dcmread(tmp_path / "out.dcm").file_meta
    assert meta.MediaStorageSOPInstanceUID.startswith("2.25.")


def test_a_dataset_built_in_memory_without_file_meta() -> None:
    from deid_support import make_instance

    ds = make_instance()
    del ds.file_meta
    result = Pseudonymizer(KEY).pseudonymize_dataset(ds)
    assert result.dataset is not None and check_deidentified(result.dataset) == []
    assert ds.PatientID == "PID-4711"  # the input is not changed
