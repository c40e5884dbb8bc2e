"""A bad-input corpus, generated: what broken or hostile senders put on the wire.

Each case is the encoded data set (Explicit VR Little Endian unless the case
says otherwise) of one instance derived from a synthetic CR image
(:func:`aifi.demo.samples.cr_study`), damaged in one way. Used by
``test_bad_input.py`` (through C-STORE and through ``aifi pseudonymize``)
and by the fuzz test of the byte-level scanner.
"""

from __future__ import annotations

import copy
import struct
import warnings
import zlib
from dataclasses import dataclass

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from aifi.demo.samples import cr_study
from aifi.dicom.part10 import file_meta

__all__ = ["Case", "base_instance", "corpus", "encode", "nested", "part10"]


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes  # the data set as sent in a C-STORE
    sop_class_uid: str
    sop_instance_uid: str  # the Affected SOP Instance UID of the request
    transfer_syntax: str = ExplicitVRLittleEndian


def base_instance(seed: str = "bad-input") -> Dataset:
    return cr_study(1, rows=32, columns=32, seed=seed)[0]


def encode(ds: Dataset) -> bytes:
    """The data set as Explicit VR Little Endian bytes (invalid values written as they are)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpus is invalid on purpose
        write_dataset(buffer, ds)
    return buffer.getvalue()


def part10(case: Case) -> bytes:
    """The case as a Part 10 file (preamble, File Meta Information, data set)."""
    return file_meta(case.sop_class_uid, case.sop_instance_uid, case.transfer_syntax) + case.body


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def nested(depth: int) -> bytes:
    """A Content Sequence (0040,A730) nested ``depth`` levels, undefined lengths (PS3.5 7.5)."""
    opening = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth


def _with_raw(ds: Dataset, tag: int, vr: str, value: bytes) -> Dataset:
    out = copy.deepcopy(ds)
    out[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)  # type: ignore[assignment]
    return out


def _with(ds: Dataset, **values: str) -> Dataset:
    out = copy.deepcopy(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in values.items():
            setattr(out, keyword, value)
    return out


def corpus(ds: Dataset | None = None, *, bomb_bytes: int = 32 << 20) -> list[Case]:
    """Every case of the corpus, derived from ``ds`` (a fresh instance when None)."""
    ds = ds if ds is not None else base_instance()
    sop_class, sop = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    body = encode(ds)
    without_pixels = encode(_strip_pixels(ds))

    def case(name: str, data: bytes, uid: str = sop, **kw: str) -> Case:
        return Case(name, data, sop_class, uid, **kw)

    # A defined-length Content Sequence whose item holds an element that claims more than the item.
    lying_item = struct.pack("<HH2sH", 0x0020, 0x000E, b"UI", 200) + b"1.2.3.4\x00"
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(lying_item)) + lying_item
    lying = without_pixels + _element(0x0040A730, b"SQ", item)

    zeros = b"\x00" * bomb_bytes
    bomb_plain = without_pixels + _element(0x7FE00010, b"OB", zeros)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = packer.compress(bomb_plain) + packer.flush()
    good_deflated = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = good_deflated.compress(body) + good_deflated.flush()

    iso2022 = _with_raw(
        _with_raw(ds, 0x00080005, "CS", b"\\ISO 2022 IR 87 "),
        0x00100010,
        "PN",
        b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B",
    )
    utf8 = _with_raw(
        _with_raw(ds, 0x00080005, "CS", b"ISO_IR 192"), 0x00100010, "PN", b"Doe^J\xc3\x28\xff\xfe"
    )
    return [
        case("not-dicom", b"this is not DICOM at all!!"),
        case("empty-elements", encode(Dataset())[:0] + _element(0x00100020, b"LO", b"")),
        case("truncated", body[:-500]),
        case("lying-length", lying),
        case("no-study-uid", encode(_without(ds, "StudyInstanceUID"))),
        case("bad-uid-leading-zero", encode(_with(ds, StudyInstanceUID="1.2.03.4"))),
        case("bad-uid-letters", encode(_with(ds, SeriesInstanceUID="1.2.abc.4"))),
        case("bad-uid-too-long", encode(_with(ds, StudyInstanceUID="1." + "2" * 70))),
        case("traversal-study-uid", encode(_with(ds, StudyInstanceUID="../../.."))),
        case("absolute-series-uid", encode(_with(ds, SeriesInstanceUID="/tmp/aifi-evil"))),
        case(
            "traversal-sop-uid",
            encode(_with(ds, SOPInstanceUID="../../../x")),
            uid="../../../x",
        ),
        case("sop-uid-mismatch", body, uid="1.2.826.0.1.3680043.10.1138.1"),
        case("deflate-bomb", bomb, transfer_syntax=DeflatedExplicitVRLittleEndian),
        case(
            "deflate-corrupt",
            b"\xff" * 64 + body[:64],
            transfer_syntax=DeflatedExplicitVRLittleEndian,
        ),
        case("deflated-fine", deflated, transfer_syntax=DeflatedExplicitVRLittleEndian),
        case("nesting-300", without_pixels + nested(300)),
        case("nesting-3000", without_pixels + nested(3000)),
        case("invalid-utf8", encode(utf8)),
        case("iso-2022", encode(iso2022)),
    ]


def _without(ds: Dataset, keyword: str) -> Dataset:
    out = copy.deepcopy(ds)
    delattr(out, keyword)
    return out


def _strip_pixels(ds: Dataset) -> Dataset:
    return _without(ds, "PixelData")
