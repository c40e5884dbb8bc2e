"""The one walk over encoded DICOM data elements (PS3.5 §7).

Two readers of aifi work on the encoded bytes instead of building pydicom
objects, and both walk them here:

* the listener checks every received data set before it answers the
  C-STORE (:func:`scan_dataset`): PS3.4 B.2.3 lets an SCP answer success
  only for an instance it stored, and pydicom reads a truncated value as a
  short one without complaint. The check walks every element header
  (PS3.5 §7.1), the items of every sequence of defined or undefined length
  (PS3.5 §7.5) and the fragments of encapsulated pixel data (PS3.5 A.4),
  skips every value, and keeps the raw bytes of a few top-level attributes
  the edge files and routes by;
* the pseudonymizer and its verifier step through elements one at a time
  (:class:`Walker`, :meth:`Walker.elements`, :meth:`Walker.items`) and copy,
  drop or re-encode each.

Both bound how deep sequences nest: no IOD nests sequences more than a few
levels deep, while a hostile or broken sender can nest them thousands of
levels deep, which exhausts the recursion of every reader after this one
(pydicom included). Every fault in what a peer sent is a :class:`WalkError`
(a :class:`~aifi.core.errors.DicomInputError`) that says which kind it is:
the bytes end early (``truncated``), a length or tag contradicts the
structure (``malformed``), or sequences nest too deeply (``too-deep``).

The retired Explicit VR Big Endian (PS3.5 A.3) is walked too.
"""

from __future__ import annotations

import functools
import mmap
import struct
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Literal, NoReturn

from pydicom.datadict import DicomDictionary, dictionary_VR, tag_for_keyword

from aifi.core.errors import DicomInputError

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "ITEM",
    "ITEM_DELIMITER",
    "LONG_VRS",
    "PIXEL_DATA",
    "SEQUENCE_DELIMITER",
    "UNDEFINED",
    "Buffer",
    "Element",
    "NeedMoreData",
    "Problem",
    "ScanResult",
    "WalkError",
    "Walker",
    "decode_text",
    "looks_implicit",
    "scan_dataset",
    "tag_name",
    "tags_for",
    "vr_of",
]

Problem = Literal["truncated", "malformed", "too-deep"]
#: What a Walker walks: bytes, a memoryview, or an mmap of a file.
Buffer = bytes | memoryview | mmap.mmap

DEFAULT_MAX_DEPTH = 64
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
#: VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 Table 7.1-1).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_LONG_VR_BYTES = frozenset(vr.encode("ascii") for vr in LONG_VRS)
_SHORT_VRS = {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN"} | {
    "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US",
}  # fmt: skip
_VR_NAMES = {vr.encode("ascii"): vr for vr in LONG_VRS | _SHORT_VRS}
# Tags the data dictionary defines as sequences: how an implicit VR data set
# (or a UN value, PS3.5 §6.2.2) says which defined-length values hold items.
_SQ_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
#: Top-level elements whose value may lie beyond the head of a file mapped so far:
#: the pseudonymizer copies them from the file, never reads them into memory.
_STREAMED = frozenset({0x7FE00008, 0x7FE00009, PIXEL_DATA})


class WalkError(DicomInputError):
    """What a peer sent cannot be walked; ``problem`` says which kind of fault it is."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem: Problem = problem


class NeedMoreData(Exception):
    """The head of the file read so far does not reach far enough; map the whole file.

    Not an error: a signal between the walker and a caller that walks a
    file's first bytes before deciding to map all of it.
    """


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


@dataclass
class ScanResult:
    """``reason`` is None when the data set is complete; ``values`` maps tag → raw value.

    ``problem`` says which kind of fault ``reason`` describes (see :class:`WalkError`).
    """

    reason: str | None
    values: dict[int, bytes] = field(default_factory=dict)
    problem: Problem | None = None


@functools.cache
def vr_of(tag: int) -> str:
    """The dictionary VR of ``tag`` (first of ambiguous ones), ``UN`` when unknown."""
    try:
        return str(dictionary_VR(tag)).split(" ")[0]
    except KeyError:
        return "UN"


def tag_name(tag: int) -> str:
    """``(GGGG,EEEE)``, as the Standard writes a tag."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def tags_for(keywords: Collection[str]) -> frozenset[int]:
    """The tags of DICOM keywords (``"StudyInstanceUID"`` → 0x0020000D)."""
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        tags.add(int(tag))
    return frozenset(tags)


def decode_text(tag: int, raw: bytes) -> str | list[str]:
    """A text value (UI, CS, LO, SH, DA, DS, IS, AS, ...) as str, or list when multi-valued.

    Only for routing attributes: decoded as Latin-1 (a superset of the
    default repertoire, never failing), trailing padding removed.
    """
    text = raw.decode("latin-1").rstrip(" \x00")
    if dictionary_VR(tag) not in ("LT", "ST", "UT") and "\\" in text:
        return [part.strip() for part in text.split("\\")]
    return text.strip()


def looks_implicit(buf: Buffer, start: int) -> bool:
    """Whether the data set at ``start`` is implicit VR, whatever the transfer syntax says.

    Some senders label an implicit VR data set as explicit (and the reverse);
    pydicom tolerates it, and so does the pseudonymizer by checking the
    first element's VR bytes.
    """
    return bytes(buf[start + 4 : start + 6]) not in _VR_NAMES


def scan_dataset(
    buf: Buffer,
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
    walker = Walker(view, implicit=implicit_vr, big_endian=not little_endian, max_depth=max_depth)
    try:
        walker.dataset(0, len(view), implicit_vr, None, 0, wanted, result.values)
    except WalkError as exc:
        result.reason = str(exc)
        result.problem = exc.problem
    return result


class Walker:
    """Walks the encoded elements of one data set; positions are byte offsets into ``buf``.

    ``size`` is the size of the whole data when ``buf`` holds only its head
    (the first bytes of a file): a walk that needs bytes beyond the head
    raises :class:`NeedMoreData` instead of calling the data truncated.
    """

    def __init__(
        self,
        buf: Buffer,
        *,
        implicit: bool,
        size: int | None = None,
        big_endian: bool = False,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.buf = buf
        self.implicit = implicit
        #: Explicit VR Big Endian (retired, PS3.5 A.3): headers and binary values are swapped
        self.big_endian = big_endian
        self.max_depth = max_depth
        order = ">" if big_endian else "<"
        self._hhi = struct.Struct(order + "HHI")
        self._h = struct.Struct(order + "H")
        self._i = struct.Struct(order + "I")
        self.available = len(buf)
        #: the size of the whole data; larger than ``buf`` when ``buf`` is a file's head
        self.size = self.available if size is None else size

    # -- one element header (PS3.5 §7.1) ------------------------------------------------
    def _short(self, pos: int, count: int, declared: bool, message: str) -> NoReturn:
        """``count`` bytes at ``pos`` are not there: more to map, a lie, or a short transfer."""
        if not declared and pos + count <= self.size:
            raise NeedMoreData
        raise WalkError("malformed" if declared else "truncated", message)

    def _head(
        self, pos: int, end: int, implicit: bool, declared: bool
    ) -> tuple[int, bytes, int, int]:
        """Tag, VR bytes (empty in implicit VR and for items), length and value start."""
        buf = self.buf
        if end - pos < 8:
            self._short(pos, 8, declared, f"data set ends inside an element header at byte {pos}")
        group, element, length = self._hhi.unpack_from(buf, pos)
        tag = group << 16 | element
        if implicit or group == 0xFFFE:
            return tag, b"", length, pos + 8
        vr = bytes(buf[pos + 4 : pos + 6])
        if vr in _LONG_VR_BYTES:
            if end - pos < 12:
                self._short(
                    pos, 12, declared, f"data set ends inside an element header at byte {pos}"
                )
            (length,) = self._i.unpack_from(buf, pos + 8)
            return tag, vr, length, pos + 12
        (length,) = self._h.unpack_from(buf, pos + 6)
        return tag, vr, length, pos + 8

    # -- stepping through elements (the pseudonymizer, the verifier) ---------------------
    def element_at(self, pos: int) -> Element:
        """The element whose header is at ``pos``; an undefined length is walked to its end."""
        # The header is decoded here rather than by _head: this runs once per element
        # the pseudonymizer touches, and the call and tuple cost a third of its time.
        buf = self.buf
        if self.available - pos < 8:
            self._short(pos, 8, False, f"data set ends inside an element header at byte {pos}")
        group, number, length = self._hhi.unpack_from(buf, pos)
        tag = group << 16 | number
        raw_vr = b""
        if group == 0xFFFE:
            if tag == ITEM_DELIMITER:
                return Element(tag, "", pos, pos + 8, pos + 8, False)
            raise WalkError(
                "malformed", f"{tag_name(tag)} stands where a data element was expected"
            )
        if self.implicit:
            vr = vr_of(tag)
            vstart = pos + 8
        else:
            raw_vr = bytes(buf[pos + 4 : pos + 6])
            vr_or_none = _VR_NAMES.get(raw_vr)
            if vr_or_none is None:
                raise WalkError(
                    "malformed",
                    f"element {tag_name(tag)} has no valid VR although the transfer syntax says "
                    "explicit VR; the sender wrote a malformed file",
                )
            vr = vr_or_none
            if vr in LONG_VRS:
                if self.available - pos < 12:
                    self._short(
                        pos, 12, False, f"data set ends inside an element header at byte {pos}"
                    )
                (length,) = self._i.unpack_from(buf, pos + 8)
                vstart = pos + 12
            else:
                (length,) = self._h.unpack_from(buf, pos + 6)
                vstart = pos + 8
        if length == UNDEFINED:
            if tag == PIXEL_DATA or (raw_vr and raw_vr not in (b"SQ", b"UN")):
                vend = self.fragments(vstart, self.available, tag)
            else:  # PS3.5 6.2.2: the items inside an explicit UN are implicit VR
                inner = self.implicit or vr == "UN"
                vend = self.sequence(vstart, self.available, inner, tag, 0, None)
            return Element(tag, vr, pos, vstart, vend, True)
        vend = vstart + length
        if vend > self.available:
            if vend > self.size:
                raise WalkError(
                    "truncated",
                    f"element {tag_name(tag)} declares {length} bytes but the data ends "
                    f"{vend - self.size} bytes short: it is truncated; ask the sender to send "
                    "it again",
                )
            if tag not in _STREAMED:
                raise NeedMoreData  # a value the caller may read lies beyond the head
        return Element(tag, vr, pos, vstart, vend, False)

    def elements(self, start: int, end: int) -> Iterator[Element]:
        """Elements of one data set between ``start`` and ``end`` (or its item delimiter)."""
        pos = start
        while pos < end:
            element = self.element_at(pos)
            if element.tag == ITEM_DELIMITER:
                return
            yield element
            pos = element.vend

    def items(self, element: Element) -> Iterator[tuple[int, int]]:
        """``(start, end)`` of the data set inside each item of a sequence element."""
        pos, end = element.vstart, element.vend
        implicit = self.implicit or element.vr == "UN"
        while pos + 8 <= end:
            tag, _vr, length, vstart = self._head(pos, end, True, True)
            if tag == SEQUENCE_DELIMITER:
                return
            if tag != ITEM:
                raise WalkError(
                    "malformed", f"unexpected tag {tag_name(tag)} inside {tag_name(element.tag)}"
                )
            if length == UNDEFINED:
                item_end = self.dataset(vstart, end, implicit, ITEM_DELIMITER, 1)
                yield vstart, item_end - 8
                pos = item_end
            else:
                yield vstart, vstart + length
                pos = vstart + length

    def value(self, element: Element) -> bytes:
        return bytes(self.buf[element.vstart : element.vend])

    # -- the whole structure (the listener's check) --------------------------------------
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
        outer = "the data set" if depth == 0 else "its item"
        while pos < end:
            tag, vr, length, vstart = self._head(pos, end, implicit, declared)
            if stop_tag is not None and tag == stop_tag:
                return vstart
            pos = vstart
            if length == UNDEFINED:
                if tag == PIXEL_DATA or (vr and vr not in (b"SQ", b"UN")):
                    pos = self.fragments(pos, end, tag)
                else:
                    pos = self.sequence(
                        pos, end, implicit or vr == b"UN", tag, depth, None, declared
                    )
                continue
            if pos + length > end:
                self._short(
                    pos,
                    length,
                    declared,
                    f"element {tag_name(tag)} declares {length} bytes"
                    + (
                        f" but {outer} has only {end - pos} left"
                        if declared
                        else f" but only {end - pos} arrived"
                    ),
                )
            if vr == b"SQ" or ((implicit or vr == b"UN") and tag in _SQ_TAGS):
                self.sequence(pos, pos + length, implicit or vr == b"UN", tag, depth, length)
            elif values is not None and tag in wanted:
                values[tag] = bytes(self.buf[pos : pos + length])
            pos += length
        if stop_tag is not None:
            self._short(
                pos, 8, declared, "data set ended before the delimiter of an undefined-length item"
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
            raise WalkError(
                "too-deep",
                f"sequences are nested too deeply: more than {self.max_depth} levels"
                f" (at {tag_name(owner)})",
            )
        declared = declared or length is not None
        while True:
            if length is not None and pos == end:
                return pos
            if end - pos < 8:
                self._short(
                    pos,
                    8,
                    declared,
                    f"sequence {tag_name(owner)} ends before its "
                    + ("sequence delimiter" if length is None else "declared length"),
                )
            tag, item_length = self._tag_and_length(pos)
            pos += 8
            if tag == SEQUENCE_DELIMITER:
                return pos
            if tag != ITEM:
                raise WalkError(
                    "malformed", f"unexpected tag {tag_name(tag)} inside {tag_name(owner)}"
                )
            if item_length == UNDEFINED:
                pos = self.dataset(pos, end, implicit, ITEM_DELIMITER, depth + 1, declared=declared)
                continue
            if pos + item_length > end:
                self._short(
                    pos,
                    item_length,
                    declared,
                    f"an item of {tag_name(owner)} declares {item_length} bytes"
                    f" but only {end - pos} " + ("remain" if declared else "arrived"),
                )
            self.dataset(pos, pos + item_length, implicit, None, depth + 1, declared=True)
            pos += item_length

    def fragments(self, pos: int, end: int, owner: int) -> int:
        """Walk the items of encapsulated pixel data (PS3.5 A.4): opaque fragments."""
        while True:
            if end - pos < 8:
                self._short(
                    pos,
                    8,
                    False,
                    f"undefined-length element {tag_name(owner)} ends before its "
                    "sequence delimiter",
                )
            tag, length = self._tag_and_length(pos)
            pos += 8
            if tag == SEQUENCE_DELIMITER:
                return pos
            if tag != ITEM:
                raise WalkError(
                    "malformed", f"unexpected tag {tag_name(tag)} inside {tag_name(owner)}"
                )
            if length == UNDEFINED:
                raise WalkError(
                    "malformed", f"a fragment of {tag_name(owner)} has an undefined length"
                )
            if pos + length > end:
                self._short(
                    pos,
                    length,
                    False,
                    f"a fragment of {tag_name(owner)} declares {length} bytes"
                    f" but only {end - pos} arrived",
                )
            pos += length

    def _tag_and_length(self, pos: int) -> tuple[int, int]:
        group, element, length = self._hhi.unpack_from(self.buf, pos)
        return int(group) << 16 | int(element), int(length)
