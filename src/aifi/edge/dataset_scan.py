"""One pass over a received data set: is it complete, and what does routing need?

pydicom reads a truncated value as a short value without complaint, and a
truncated instance must not be answered with success (PS3.4 B.2.3: the SCP
answers success only for an instance it stored). :func:`scan_dataset` walks
the element headers of the encoded data set (PS3.5 §7.1) and the items of
undefined-length sequences and encapsulated pixel data (PS3.5 §7.5, A.4),
skipping every value, and reports the first place where the bytes end early.
On the way it keeps the raw bytes of the few top-level attributes the edge
needs to file and route the instance, so the per-instance path never builds
a pydicom Dataset: values are neither parsed nor copied.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, tag_for_keyword

__all__ = ["ScanResult", "decode_text", "incomplete_reason", "scan_dataset", "tags_for"]

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD


class _TruncatedError(Exception):
    pass


@dataclass
class ScanResult:
    """``reason`` is None when the data set is complete; ``values`` maps tag → raw value."""

    reason: str | None
    values: dict[int, bytes] = field(default_factory=dict)


def tags_for(keywords: Collection[str]) -> frozenset[int]:
    """The tags of DICOM keywords (``"StudyInstanceUID"`` → 0x0020000D)."""
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        tags.add(int(tag))
    return frozenset(tags)


def scan_dataset(
    buf: memoryview | bytes,
    *,
    implicit_vr: bool,
    little_endian: bool,
    wanted: frozenset[int] = frozenset(),
) -> ScanResult:
    """Check completeness and collect the raw values of ``wanted`` top-level tags."""
    view = memoryview(buf)
    result = ScanResult(reason=None)
    order = "<" if little_endian else ">"
    try:
        end = _walk_dataset(view, 0, len(view), implicit_vr, order, None, wanted, result.values)
    except _TruncatedError as exc:
        result.reason = str(exc)
        return result
    if end != len(view):
        result.reason = f"data set ends in the middle of an element at byte {end}"
    return result


def incomplete_reason(
    buf: memoryview | bytes, *, implicit_vr: bool, little_endian: bool
) -> str | None:
    """None when every element fits in ``buf``; otherwise a sentence saying where it ends."""
    return scan_dataset(buf, implicit_vr=implicit_vr, little_endian=little_endian).reason


def decode_text(tag: int, raw: bytes) -> str | list[str]:
    """A text value (UI, CS, LO, SH, DA, DS, IS, AS, ...) as str, or list when multi-valued.

    Only for routing attributes: decoded as Latin-1 (a superset of the
    default repertoire, never failing), trailing padding removed.
    """
    text = raw.decode("latin-1").rstrip(" \x00")
    if dictionary_VR(tag) not in ("LT", "ST", "UT") and "\\" in text:
        return [part.strip() for part in text.split("\\")]
    return text.strip()


def _tag(view: memoryview, pos: int, order: str) -> int:
    group, element = struct.unpack_from(order + "HH", view, pos)
    return int(group) << 16 | int(element)


def _walk_dataset(
    view: memoryview,
    pos: int,
    end: int,
    implicit: bool,
    order: str,
    stop_tag: int | None,
    wanted: frozenset[int] = frozenset(),
    values: dict[int, bytes] | None = None,
) -> int:
    """Walk elements from ``pos``; return the position after the data set (or its delimiter)."""
    while pos < end:
        if end - pos < 8:
            raise _TruncatedError(f"data set truncated inside an element header at byte {pos}")
        tag = _tag(view, pos, order)
        if stop_tag is not None and tag == stop_tag:
            return pos + 8
        if implicit or tag >> 16 == 0xFFFE:
            (length,) = struct.unpack_from(order + "I", view, pos + 4)
            pos += 8
        else:
            vr = bytes(view[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                if end - pos < 12:
                    raise _TruncatedError(
                        f"data set truncated inside an element header at byte {pos}"
                    )
                (length,) = struct.unpack_from(order + "I", view, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from(order + "H", view, pos + 6)
                pos += 8
        if length == _UNDEFINED:
            pos = _walk_items(view, pos, end, implicit, order, tag)
        else:
            if pos + length > end:
                raise _TruncatedError(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes"
                    f" but only {end - pos} arrived"
                )
            if values is not None and tag in wanted:
                values[tag] = bytes(view[pos : pos + length])
            pos += length
    if stop_tag is not None:
        raise _TruncatedError("data set ended before the delimiter of an undefined-length item")
    return pos


def _walk_items(
    view: memoryview, pos: int, end: int, implicit: bool, order: str, owner: int
) -> int:
    """Walk the items of an undefined-length sequence or encapsulated pixel data."""
    while True:
        if end - pos < 8:
            raise _TruncatedError(
                f"undefined-length element ({owner >> 16:04X},{owner & 0xFFFF:04X})"
                " ends before its sequence delimiter"
            )
        tag = _tag(view, pos, order)
        (length,) = struct.unpack_from(order + "I", view, pos + 4)
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _TruncatedError(f"unexpected tag inside ({owner >> 16:04X},{owner & 0xFFFF:04X})")
        if length == _UNDEFINED:
            pos = _walk_dataset(view, pos, end, implicit, order, _ITEM_END)
        else:
            if pos + length > end:
                raise _TruncatedError(
                    f"an item of ({owner >> 16:04X},{owner & 0xFFFF:04X}) declares {length}"
                    f" bytes but only {end - pos} arrived"
                )
            pos += length
