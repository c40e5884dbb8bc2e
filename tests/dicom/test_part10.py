"""aifi's File Meta Information reads back as pydicom writes it (PS3.10 §7.1)."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info

from aifi.dicom.part10 import IMPLEMENTATION_CLASS_UID, file_meta


@pytest.mark.parametrize("sop_uid", ["1.2.3", "1.2.34"])  # odd and even lengths
def test_header_equals_pydicoms_encoding(sop_uid: str) -> None:
    ours = file_meta("1.2.840.10008.5.1.4.1.1.2", sop_uid, "1.2.840.10008.1.2.4.90")
    fp = BytesIO(ours)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    assert fp.tell() == len(ours)
    assert meta.MediaStorageSOPInstanceUID == sop_uid
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID

    reference = FileMetaDataset()
    for element in meta:
        if element.keyword != "FileMetaInformationGroupLength":
            reference[element.tag] = element
    expected = DicomBytesIO()
    write_file_meta_info(expected, reference, enforce_standard=True)
    assert ours[132:] == expected.getvalue()
