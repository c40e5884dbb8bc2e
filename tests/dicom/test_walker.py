"""The one walker: the listener's check and the pseudonymizer's element walk agree.

Real files from pydicom's test data (its ``pydicom/data/test_files``): each is
walked both ways, cut, and mapped only in part, as a peer or a disk gives them.
"""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble

from aifi.dicom.part10 import read_file_meta
from aifi.dicom.walker import (
    SEQUENCE_DELIMITER,
    Element,
    NeedMoreData,
    Walker,
    WalkError,
    scan_dataset,
)
from aifi.errors import DicomInputError

FILES = ["CT_small.dcm", "MR_small_implicit.dcm", "emri_small_big_endian.dcm", "rtplan.dcm"]


def _body(name: str) -> tuple[bytes, bool, bool]:
    path = get_testdata_file(name)
    assert path is not None
    raw = Path(path).read_bytes()
    fp = BytesIO(raw)
    read_preamble(fp, False)
    ts = _read_file_meta_info(fp).TransferSyntaxUID
    return raw[fp.tell() :], ts.is_implicit_VR, ts.is_little_endian


def _walk(walker: Walker, start: int, end: int) -> list[int]:
    tags = []
    for element in walker.elements(start, end):
        tags.append(element.tag)
        if element.vr == "SQ":
            for item_start, item_end in walker.items(element):
                tags.extend(_walk(walker, item_start, item_end))
    return tags


@pytest.mark.parametrize("name", FILES)
def test_both_walks_see_the_same_top_level_values(name: str) -> None:
    body, implicit, little = _body(name)
    walker = Walker(body, implicit=implicit, big_endian=not little)
    top: list[Element] = list(walker.elements(0, len(body)))
    wanted = frozenset(e.tag for e in top if not e.undefined and e.vr != "SQ")
    scan = scan_dataset(body, implicit_vr=implicit, little_endian=little, wanted=wanted)
    assert scan.reason is None
    assert scan.values == {e.tag: walker.value(e) for e in top if e.tag in wanted}
    assert len(_walk(walker, 0, len(body))) >= len(top)


def test_the_head_of_a_file_asks_for_more_and_a_cut_file_is_truncated() -> None:
    body, implicit, _little = _body("rtplan.dcm")  # sequences early, so the head is short
    head = Walker(body[:300], implicit=implicit, size=len(body))
    with pytest.raises(NeedMoreData):
        list(head.elements(0, head.size))
    cut = Walker(body[:-7], implicit=implicit)
    with pytest.raises(WalkError) as caught:
        _walk(cut, 0, cut.size)
    assert caught.value.problem == "truncated"
    assert isinstance(caught.value, DicomInputError)


def _nested(depth: int) -> bytes:
    sequence = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (sequence + item) * depth + ends * depth


def test_deep_nesting_is_one_bounded_refusal_on_both_walks() -> None:
    deep = _nested(3000)
    scan = scan_dataset(deep, implicit_vr=False, little_endian=True)
    assert scan.problem == "too-deep"
    with pytest.raises(WalkError) as caught:
        Walker(deep, implicit=False).element_at(0)
    assert caught.value.problem == "too-deep"
    shallow = _nested(10)
    element = Walker(shallow, implicit=False).element_at(0)
    assert element.undefined and element.vend == len(shallow)
    assert struct.unpack_from("<HH", shallow, len(shallow) - 8) == (
        SEQUENCE_DELIMITER >> 16,
        SEQUENCE_DELIMITER & 0xFFFF,
    )


def test_a_file_without_dicm_is_refused_with_a_reason() -> None:
    with pytest.raises(DicomInputError, match="DICM"):
        read_file_meta(b"\0" * 200)
