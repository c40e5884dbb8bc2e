"""Reading and writing DICOM data elements as bytes (PS3.5 Section 7).

The pseudonymizer works on the encoded dataset: it reads each element's tag,
VR and length, and copies, drops or re-encodes the element without building
pydicom objects. Values it keeps are copied byte for byte and never parsed.
Sequences (PS3.5 7.5) of defined or undefined length are walked item by
item; what the pseudonymizer writes always has defined lengths and is little
endian. The retired Explicit VR Big Endian (PS3.5 A.3) is read too; its
binary values are turned little endian by reversing the bytes of each number.
"""

from __future__ import annotations

import array
import functools
import mmap
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR

from aifi.errors import DicomInputError, PseudonymizationError

__all__ = [
    "ITEM",
    "ITEM_DELIMITER",
    "MAX_INFLATED_BYTES",
    "SEQUENCE_DELIMITER",
    "SWAP_WIDTH",
    "Buffer",
    "Element",
    "NeedMoreData",
    "Reader",
    "element_header",
    "encode_element",
    "encode_sequence",
    "inflate_bounded",
    "looks_implicit",
    "pad",
    "swap",
    "vr_of",
]

ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
#: VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 Table 7.1-1).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UR", "UT", "UN", "SV", "UV"})
#: What a Reader walks: bytes, or an mmap of a file.
Buffer = bytes | mmap.mmap
_ALL_VRS = LONG_VRS | {
    "AE",
    "AS",
    "AT",
    "CS",
    "DA",
    "DS",
    "DT",
    "FD",
    "FL",
    "IS",
    "LO",
    "LT",
    "PN",
    "SH",
    "SL",
    "SS",
    "ST",
    "TM",
    "UI",
    "UL",
    "US",
}
_VR_NAMES = {vr.encode("ascii"): vr for vr in _ALL_VRS}
_HH = struct.Struct("<HH")
_I = struct.Struct("<I")
_H = struct.Struct("<H")
_HHI = struct.Struct("<HHI")


#: Top-level elements whose value is copied from the file, never read into memory.
_STREAMED = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})


class NeedMoreData(Exception):
    """The head of the file read so far does not reach far enough; map the whole file."""


@functools.cache
def vr_of(tag: int) -> str:
    """The dictionary VR of ``tag`` (first of ambiguous ones), ``UN`` when unknown."""
    try:
        return str(dictionary_VR(tag)).split(" ")[0]
    except KeyError:
        return "UN"


@dataclass(slots=True)
class Element:
    """Where one encoded element lies: header at ``start``, value in ``[vstart, vend)``.

    For an element of undefined length ``vend`` is past its delimiter.
    """

    tag: int
    vr: str
    start: int
    vstart: int
    vend: int
    undefined: bool


class Reader:
    """Walks the encoded elements of a buffer (bytes, memoryview or mmap)."""

    def __init__(
        self, buf: Buffer, *, implicit: bool, size: int | None = None, big_endian: bool = False
    ) -> None:
        self.buf = buf
        self.implicit = implicit
        #: Explicit VR Big Endian (retired, PS3.5 A.3): headers and binary values are swapped
        self.big_endian = big_endian
        order = ">" if big_endian else "<"
        self._hh = struct.Struct(order + "HH")
        self._i = struct.Struct(order + "I")
        self._h = struct.Struct(order + "H")
        self._hhi = struct.Struct(order + "HHI")
        self.available = len(buf)
        #: the size of the whole data; larger than ``buf`` when ``buf`` is a file's head
        self.size = self.available if size is None else size

    def _need(self, pos: int, count: int) -> None:
        if pos + count > self.available:
            if pos + count <= self.size:
                raise NeedMoreData
            raise DicomInputError(
                "the DICOM data ends inside a data element: the file is truncated; "
                "ask the sender to send it again"
            )

    def element_at(self, pos: int) -> Element:
        self._need(pos, 8)
        buf = self.buf
        group, elem = self._hh.unpack_from(buf, pos)
        tag = group << 16 | elem
        if self.implicit:
            (length,) = self._i.unpack_from(buf, pos + 4)
            vstart = pos + 8
            vr = vr_of(tag)
        else:
            vr_or_none = _VR_NAMES.get(buf[pos + 4 : pos + 6])
            if vr_or_none is None:
                raise DicomInputError(
                    f"element ({group:04X},{elem:04X}) has no valid VR although the transfer "
                    "syntax says explicit VR; the sender wrote a malformed file"
                )
            vr = vr_or_none
            if vr in LONG_VRS:
                self._need(pos, 12)
                (length,) = self._i.unpack_from(buf, pos + 8)
                vstart = pos + 12
            else:
                (length,) = self._h.unpack_from(buf, pos + 6)
                vstart = pos + 8
        if length == UNDEFINED:
            if vr == "UN" and not self.implicit:  # PS3.5 6.2.2: items inside are implicit VR
                inner = Reader(buf, implicit=True, size=self.size, big_endian=self.big_endian)
                return Element(tag, vr, pos, vstart, inner._end_of_items(vstart), True)
            return Element(tag, vr, pos, vstart, self._end_of_items(vstart), True)
        vend = vstart + length
        if vend > self.available:
            if vend > self.size:
                self._need(vstart, length)  # truncated
            if tag not in _STREAMED:
                raise NeedMoreData  # a value the engine may read lies beyond the head
        return Element(tag, vr, pos, vstart, vend, False)

    def _end_of_items(self, pos: int) -> int:
        """End (past the sequence delimiter) of items starting at ``pos``."""
        buf = self.buf
        while True:
            self._need(pos, 8)
            group, elem, length = self._hhi.unpack_from(buf, pos)
            tag = group << 16 | elem
            if tag == SEQUENCE_DELIMITER:
                return pos + 8
            if tag != ITEM:
                raise DicomInputError(
                    f"a sequence holds ({group:04X},{elem:04X}) where an item was expected; "
                    "the file is malformed"
                )
            pos = self._end_of_item(pos + 8) if length == UNDEFINED else pos + 8 + length

    def _end_of_item(self, pos: int) -> int:
        buf = self.buf
        while True:
            self._need(pos, 8)
            group, elem = self._hh.unpack_from(buf, pos)
            if (group << 16 | elem) == ITEM_DELIMITER:
                return pos + 8
            pos = self.element_at(pos).vend

    def elements(self, start: int, end: int) -> Iterator[Element]:
        """Elements of one dataset between ``start`` and ``end`` (or its item delimiter)."""
        pos = start
        while pos < end:
            element = self.element_at(pos)
            if element.tag == ITEM_DELIMITER:
                return
            yield element
            pos = element.vend

    def items(self, element: Element) -> Iterator[tuple[int, int]]:
        """``(start, end)`` of the dataset inside each item of a sequence element."""
        buf = self.buf
        pos, end = element.vstart, element.vend
        while pos + 8 <= end:
            group, elem, length = self._hhi.unpack_from(buf, pos)
            tag = group << 16 | elem
            if tag == SEQUENCE_DELIMITER:
                return
            if tag != ITEM:
                raise DicomInputError("a sequence item is malformed; the file cannot be used")
            if length == UNDEFINED:
                item_end = self._end_of_item(pos + 8)
                yield pos + 8, item_end - 8
                pos = item_end
            else:
                yield pos + 8, pos + 8 + length
                pos += 8 + length

    def value(self, element: Element) -> bytes:
        return bytes(self.buf[element.vstart : element.vend])


def looks_implicit(buf: Buffer, start: int) -> bool:
    """Whether the dataset at ``start`` is implicit VR, whatever the transfer syntax says.

    Some senders label an implicit VR dataset as explicit (and the reverse);
    pydicom tolerates it, and so does the pseudonymizer by checking the
    first element's VR bytes.
    """
    return bytes(buf[start + 4 : start + 6]) not in _VR_NAMES


#: Bytes per number of the binary VRs whose byte order differs between endiannesses.
SWAP_WIDTH = {
    "US": 2, "SS": 2, "OW": 2, "AT": 2,
    "UL": 4, "SL": 4, "FL": 4, "OL": 4, "OF": 4,
    "FD": 8, "OD": 8, "SV": 8, "UV": 8, "OV": 8,
}  # fmt: skip
_ARRAY_CODE = {2: "H", 4: "I" if array.array("I").itemsize == 4 else "L", 8: "Q"}


def swap(value: bytes, width: int) -> bytes:
    """``value`` with the byte order of each ``width``-byte number reversed."""
    if width < 2 or len(value) % width:
        return value
    numbers = array.array(_ARRAY_CODE[width], value)
    numbers.byteswap()
    return numbers.tobytes()


def pad(vr: str, value: bytes) -> bytes:
    """``value`` padded to even length as PS3.5 6.2 asks (NUL for UI and binary, else space)."""
    if len(value) % 2 == 0:
        return value
    return value + (b"\0" if vr in {"UI", "OB", "UN"} else b" ")


def encode_element(tag: int, vr: str, value: bytes, *, implicit: bool) -> bytes:
    """One element with a defined length."""
    value = pad(vr, value)
    head = _HH.pack(tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + _I.pack(len(value)) + value
    if vr in LONG_VRS:
        return head + vr.encode("ascii") + b"\0\0" + _I.pack(len(value)) + value
    if len(value) > 0xFFFF:
        raise ValueError(f"value too long for VR {vr}")
    return head + vr.encode("ascii") + _H.pack(len(value)) + value


def element_header(tag: int, vr: str, length: int) -> bytes:
    """The header of an explicit VR little endian element whose value follows separately."""
    head = _HH.pack(tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in LONG_VRS:
        return head + b"\0\0" + _I.pack(length)
    return head + _H.pack(length)


def encode_sequence(tag: int, items: list[bytes], *, implicit: bool) -> bytes:
    """A sequence of defined length holding ``items`` (each an encoded dataset)."""
    body = b"".join(_HHI.pack(0xFFFE, 0xE000, len(item)) + item for item in items)
    return encode_element(tag, "SQ", body, implicit=implicit)


#: The largest data set a Deflated Explicit VR Little Endian file may inflate to: a
#: deflate bomb (a few hundred KB that inflate to gigabytes) is refused, not inflated.
MAX_INFLATED_BYTES = 256 << 20


def inflate_bounded(data: bytes, limit: int | None = None) -> bytes:
    """``data`` inflated (raw deflate, PS3.5 A.5), refused past ``limit`` bytes.

    ``limit`` defaults to :data:`MAX_INFLATED_BYTES`.
    """
    limit = MAX_INFLATED_BYTES if limit is None else limit
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise PseudonymizationError(f"its deflated data set cannot be inflated ({exc})") from exc
    if len(inflated) > limit:
        raise PseudonymizationError(
            f"its deflated data set inflates past {limit >> 20} MiB: refused as a deflate bomb"
        )
    return inflated
