"""Writing DICOM data elements as bytes (PS3.5 §7.1, §7.5).

What aifi writes always has defined lengths and, unless a caller says
implicit, is Explicit VR Little Endian. Values are given already encoded;
:func:`pad` makes them even as PS3.5 §6.2 asks. :func:`swap` turns the
binary values of the retired Explicit VR Big Endian (PS3.5 A.3) little
endian by reversing the bytes of each number.
"""

from __future__ import annotations

import array
import struct

from aifi.dicom.walker import ITEM, LONG_VRS

__all__ = ["SWAP_WIDTH", "element_header", "encode_element", "encode_sequence", "pad", "swap"]

_HH = struct.Struct("<HH")
_HHI = struct.Struct("<HHI")
_I = struct.Struct("<I")
_H = struct.Struct("<H")

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
    """A sequence of defined length holding ``items`` (each an encoded data set)."""
    body = b"".join(_HHI.pack(ITEM >> 16, ITEM & 0xFFFF, len(item)) + item for item in items)
    return encode_element(tag, "SQ", body, implicit=implicit)
