"""One pass over a received data set: is it complete, and what does routing need?

pydicom reads a truncated value as a short value without complaint, and a
truncated instance must not be answered with success (PS3.4 B.2.3: the SCP
answers success only for an instance it stored). :func:`scan_dataset` walks
the element headers of the encoded data set (PS3.5 §7.1), the items of every
sequence, of defined or undefined length (PS3.5 §7.5), and the fragments of
encapsulated pixel data (PS3.5 A.4), skipping every other value, and reports
the first place where the bytes end early or a length lies about what
follows. It also bounds how deep sequences nest: no IOD nests sequences
more than a few levels deep, while a hostile or broken sender can nest them
thousands of levels deep, which exhausts the recursion of every reader after
this one (pydicom included).

On the way it keeps the raw bytes of the few top-level attributes the edge
needs to file and route the instance, so the per-instance path never builds
a pydicom Dataset: values are neither parsed nor copied.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from pydicom.datadict import DicomDictionary, dictionary_VR, tag_for_keyword

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "ScanProblem",
    "ScanResult",
    "decode_text",
    "scan_dataset",
    "tags_for",
]

ScanProblem = Literal["truncated", "malformed", "too-deep"]

DEFAULT_MAX_DEPTH = 64

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# Tags the data dictionary defines as sequences: how an implicit VR data set
# (or a UN value, PS3.5 §6.2.2) says which defined-length values hold items.
_SQ_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010


class _ScanError(Exception):
    def __init__(self, problem: ScanProblem, message: str) -> None:
        super().__init__(message)
        self.problem: ScanProblem = problem


@dataclass
class ScanResult:
    """``reason`` is None when the data set is complete; ``values`` maps tag → raw value.

    ``problem`` says which kind of fault ``reason`` describes: the bytes end
    early (``truncated``), a length or tag contradicts the structure
    (``malformed``), or sequences nest deeper than allowed (``too-deep``).
    """

    reason: str | None
    values: dict[int, bytes] = field(default_factory=dict)
    problem: ScanProblem | None = None


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
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> ScanResult:
    """Check completeness and nesting; collect the raw values of ``wanted`` top-level tags.

    Never raises for what a peer sent: every fault is a ``reason``.
    """
    view = memoryview(buf)
    result = ScanResult(reason=None)
    walker = _Walker(view, "<" if little_endian else ">", max_depth)
    try:
        walker.dataset(0, len(view), implicit_vr, None, 0, wanted, result.values)
    except _ScanError as exc:
        result.reason = str(exc)
        result.problem = exc.problem
    return result


def decode_text(tag: int, raw: bytes) -> str | list[str]:
    """A text value (UI, CS, LO, SH, DA, DS, IS, AS, ...) as str, or list when multi-valued.

    Only for routing attributes: decoded as Latin-1 (a superset of the
    default repertoire, never failing), trailing padding removed.
    """
    text = raw.decode("latin-1").rstrip(" \x00")
    if dictionary_VR(tag) not in ("LT", "ST", "UT") and "\\" in text:
        return [part.strip() for part in text.split("\\")]
    return text.strip()


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    """Walks one encoded data set; positions are byte offsets into ``view``."""

    def __init__(self, view: memoryview, order: str, max_depth: int) -> None:
        self.view = view
        self.order = order
        self.max_depth = max_depth
        self._header = struct.Struct(order + "HHI")
        self._short = struct.Struct(order + "H")
        self._long = struct.Struct(order + "I")

    def _tag_and_length(self, pos: int) -> tuple[int, int]:
        group, element, length = self._header.unpack_from(self.view, pos)
        return int(group) << 16 | int(element), int(length)

    def dataset(
        self,
        pos: int,
        end: int,
        implicit: bool,
        stop_tag: int | None,
        depth: int,
        wanted: frozenset[int] = frozenset(),
        values: dict[int, bytes] | None = None,
        declared: bool = False,
    ) -> int:
        """Walk elements from ``pos`` to ``end`` (or ``stop_tag``); the position after them.

        ``declared``: ``end`` is a length the data set declares (of an item or
        a sequence), so an element crossing it is a lie, not a short transfer.
        """
        view = self.view
        outer = "the data set" if depth == 0 else "its item"
        short: ScanProblem = "malformed" if declared else "truncated"
        while pos < end:
            if end - pos < 8:
                raise _ScanError(short, f"data set ends inside an element header at byte {pos}")
            tag, length = self._tag_and_length(pos)
            if stop_tag is not None and tag == stop_tag:
                return pos + 8
            vr = b""
            if implicit or tag >> 16 == 0xFFFE:
                pos += 8
            else:
                vr = bytes(view[pos + 4 : pos + 6])
                if vr in _LONG_VRS:
                    if end - pos < 12:
                        raise _ScanError(
                            short, f"data set ends inside an element header at byte {pos}"
                        )
                    (length,) = self._long.unpack_from(view, pos + 8)
                    pos += 12
                else:
                    (length,) = self._short.unpack_from(view, pos + 6)
                    pos += 8
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA or (vr and vr not in (b"SQ", b"UN")):
                    pos = self.fragments(pos, end, tag)
                else:
                    pos = self.sequence(
                        pos, end, implicit or vr == b"UN", tag, depth, None, declared
                    )
                continue
            if pos + length > end:
                raise _ScanError(
                    short,
                    f"element {_name(tag)} declares {length} bytes"
                    + (
                        f" but {outer} has only {end - pos} left"
                        if declared
                        else f" but only {end - pos} arrived"
                    ),
                )
            if vr == b"SQ" or ((implicit or vr == b"UN") and tag in _SQ_TAGS):
                self.sequence(pos, pos + length, implicit or vr == b"UN", tag, depth, length)
            elif values is not None and tag in wanted:
                values[tag] = bytes(view[pos : pos + length])
            pos += length
        if stop_tag is not None:
            raise _ScanError(
                short, "data set ended before the delimiter of an undefined-length item"
            )
        return pos

    def sequence(
        self,
        pos: int,
        end: int,
        implicit: bool,
        owner: int,
        depth: int,
        length: int | None,
        declared: bool = False,
    ) -> int:
        """Walk the items of a sequence (PS3.5 §7.5); ``length`` None when undefined."""
        if depth + 1 > self.max_depth:
            raise _ScanError(
                "too-deep",
                f"sequences nest deeper than {self.max_depth} levels (at {_name(owner)})",
            )
        declared = declared or length is not None
        while True:
            if length is not None and pos == end:
                return pos
            if end - pos < 8:
                raise _ScanError(
                    "malformed" if declared else "truncated",
                    f"sequence {_name(owner)} ends before its "
                    + ("sequence delimiter" if length is None else "declared length"),
                )
            tag, item_length = self._tag_and_length(pos)
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise _ScanError("malformed", f"unexpected tag {_name(tag)} inside {_name(owner)}")
            if item_length == _UNDEFINED:
                pos = self.dataset(pos, end, implicit, _ITEM_END, depth + 1, declared=declared)
                continue
            if pos + item_length > end:
                problem: ScanProblem = "malformed" if declared else "truncated"
                raise _ScanError(
                    problem,
                    f"an item of {_name(owner)} declares {item_length} bytes"
                    f" but only {end - pos} " + ("arrived" if problem == "truncated" else "remain"),
                )
            self.dataset(pos, pos + item_length, implicit, None, depth + 1, declared=True)
            pos += item_length

    def fragments(self, pos: int, end: int, owner: int) -> int:
        """Walk the items of encapsulated pixel data (PS3.5 A.4): opaque fragments."""
        while True:
            if end - pos < 8:
                raise _ScanError(
                    "truncated",
                    f"undefined-length element {_name(owner)} ends before its sequence delimiter",
                )
            tag, length = self._tag_and_length(pos)
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise _ScanError("malformed", f"unexpected tag {_name(tag)} inside {_name(owner)}")
            if length == _UNDEFINED:
                raise _ScanError(
                    "malformed", f"a fragment of {_name(owner)} has an undefined length"
                )
            if pos + length > end:
                raise _ScanError(
                    "truncated",
                    f"a fragment of {_name(owner)} declares {length} bytes"
                    f" but only {end - pos} arrived",
                )
            pos += length
