"""multipart/related written and read as streams (PS3.18 §8.6.1.2, RFC 2046 §5.1.1).

The reader is python-multipart's parser behind aifi's one interface; these
tests feed it bodies aifi's writer made, cut at every awkward place, and a
real DICOM file (pydicom's test data ``CT_small.dcm``).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from aifi.dicom import multipart
from aifi.dicom.multipart import MultipartError, MultipartReader


def _ct() -> Path:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    return Path(path)


def test_files_written_then_read_in_any_chunking_are_the_same_bytes(tmp_path: Path) -> None:
    ct = _ct()
    other = tmp_path / "other.bin"
    other.write_bytes(b"--not-the-boundary\r\n" * 1000)  # delimiter-like content
    boundary = multipart.new_boundary()
    body = b"".join(multipart.dicom_files([ct, other], boundary))
    header = multipart.content_type(boundary)
    for size in (1, 7, 4096, len(body)):
        reader: MultipartReader[BytesIO] = MultipartReader(multipart.boundary_of(header), BytesIO)
        ended = []
        for at in range(0, len(body), size):
            ended += reader.feed(body[at : at + size])
        reader.close()
        assert [p.sink.getvalue() for p in ended] == [ct.read_bytes(), other.read_bytes()]
        assert {p.media_type for p in reader.parts} == {"application/dicom"}
    (first, _second) = multipart.split(body, multipart.boundary_of(header))
    assert pydicom.dcmread(BytesIO(first)).SOPInstanceUID == pydicom.dcmread(ct).SOPInstanceUID


def test_a_part_streams_into_its_sink_before_it_ends() -> None:
    boundary = "b0undary"
    big = bytes(range(256)) * 4096  # 1 MiB
    body = b"".join(multipart.write_parts([("application/octet-stream", [big])], boundary))
    reader: MultipartReader[BytesIO] = MultipartReader(boundary.encode(), BytesIO)
    assert reader.feed(body[: len(body) // 2]) == []
    assert reader.current is not None and len(reader.current.getvalue()) > len(big) // 3
    (part,) = reader.feed(body[len(body) // 2 :])
    reader.close()
    assert part.sink.getvalue() == big and part.media_type == "application/octet-stream"


def test_the_writer_reads_each_file_only_when_the_body_reaches_it(tmp_path: Path) -> None:
    late = tmp_path / "late.dcm"
    body = multipart.dicom_files([_ct(), late], "b")
    next(body)  # the first part's head
    late.write_bytes(b"written after the body began")
    assert b"written after the body began" in b"".join(body)


def test_a_body_without_its_closing_delimiter_is_refused() -> None:
    body = b"".join(multipart.write_parts([("application/dicom", [b"x" * 100])], "b"))
    reader: MultipartReader[BytesIO] = MultipartReader(b"b", BytesIO)
    reader.feed(body[:-10])
    with pytest.raises(MultipartError, match="closing boundary"):
        reader.close()


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (None, "no Content-Type"),
        ("application/dicom", "must be multipart/related"),
        ('multipart/related; type="application/json"; boundary=x', "parts must be"),
        ('multipart/related; type="application/dicom"', "no boundary"),
    ],
)
def test_a_wrong_content_type_says_what_is_wrong(header: str | None, problem: str) -> None:
    with pytest.raises(MultipartError, match=problem):
        multipart.boundary_of(header)


def test_a_content_type_without_type_is_taken_as_dicom() -> None:
    assert multipart.boundary_of("multipart/related; boundary=abc") == b"abc"
    assert multipart.boundary_of('multipart/related; type="x/y"; boundary=z', None) == b"z"
