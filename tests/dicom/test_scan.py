"""Truncated data sets are detected without decoding (real pydicom test files)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble

from aifi.dicom.walker import scan_dataset

FILES = [
    "CT_small.dcm",  # explicit VR little endian, native pixels
    "MR_small_implicit.dcm",  # implicit VR
    "emri_small_big_endian.dcm",  # explicit VR big endian
    "JPEG2000.dcm",  # encapsulated pixel data (undefined length)
    "rtplan.dcm",  # nested sequences
]


def body_of(name: str) -> tuple[bytes, bool, bool]:
    path = get_testdata_file(name)
    assert path is not None
    raw = Path(path).read_bytes()
    fp = BytesIO(raw)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    ts = meta.TransferSyntaxUID
    return raw[fp.tell() :], ts.is_implicit_VR, ts.is_little_endian


@pytest.mark.parametrize("name", FILES)
def test_complete_file_passes_and_any_truncation_is_found(name: str) -> None:
    body, implicit, little = body_of(name)
    assert scan_dataset(body, implicit_vr=implicit, little_endian=little).reason is None
    for cut in (1, 7, 100, len(body) // 2):
        reason = scan_dataset(body[:-cut], implicit_vr=implicit, little_endian=little).reason
        assert reason is not None, f"{name} cut by {cut} bytes went unnoticed"
