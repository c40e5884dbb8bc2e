"""The hub's check: does an instance carry anything outside the profile? (PS3.15 Annex E as a gate).

The hub does not trust the edge: it reads the instance's bytes itself
(:mod:`aifi.deid.encoding`), not pydicom's dictionary (which keeps one of two
elements with the same tag and stops where it is told). It walks the File
Meta Information, the whole data set to its end (after Pixel Data too) and
every sequence item, sequences sent as UN included, and judges each element
against an allowlist made of the same data the edge executes:

* an attribute of Table E.1-1 is allowed only with a value its action can
  produce: empty (Z), the dummy (D), a pseudonymous ``2.25`` UID (U), a value
  kept under an option the edge implements (patient characteristics in the
  form of their VR), a description reduced to the descriptor vocabulary (C)
  and dates only when Longitudinal Temporal Information Modified is
  ``MODIFIED`` (shifted by the Modified Dates option); Patient ID, Patient's
  Name and Accession Number only as keyed pseudonyms;
* an attribute on the safe list is allowed with a value of its VR's form;
  text values only within the descriptor vocabulary, codes only as codes;
* the de-identification marks (PS3.3 C.7.1.1, C.7.6.1) are required;
* anything else — private attributes, attributes the table and the safe
  list do not name, a tag seen twice, Burned In Annotation or Recognizable
  Visual Features YES, identity in the File Meta Information — is refused.

:func:`check_deidentified_file` and :func:`check_deidentified_bytes` return
one sentence per problem, each naming the attribute (path, keyword and tag)
and what the hospital's IT can do, never the value. An empty list means the
instance may be stored. :func:`check_deidentified` does the same for a
pydicom data set (encoded first, so it gets the same byte-level walk).
"""

from __future__ import annotations

import io
import mmap
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import charset
from pydicom.datadict import keyword_for_tag

from aifi.deid.defined_terms import is_defined_term
from aifi.deid.descriptors import Vocabulary, default_vocabulary, is_clean_descriptor, is_code
from aifi.deid.encoding import inflate_bounded
from aifi.deid.options import CID_7050
from aifi.deid.profile import Profile, load_profile
from aifi.deid.values import FORM_VRS, conforms, dummy_value
from aifi.dicom.walker import Buffer, Element, Walker, WalkError, vr_of
from aifi.errors import DicomInputError, PseudonymizationError

__all__ = ["check_deidentified", "check_deidentified_bytes", "check_deidentified_file"]

_FIX = "pseudonymize it with the aifi edge before sending"
_TOO_DEEP = "its sequences are nested too deeply to be checked; no IOD nests like this"
#: What :func:`aifi.deid.keys.pseudonym` produces: 16 characters of upper-case base32.
_PSEUDONYM = re.compile(r"[A-Z2-7]{16}")
_PSEUDO_UID = re.compile(r"2\.25\.(?:0|[1-9]\d{0,38})")
#: UIDs of the Standard itself (SOP classes, transfer syntaxes, coding schemes): no identity.
_WELL_KNOWN_ROOT = "1.2.840.10008."
_UID_FORM = re.compile(r"(?:0|[1-9]\d*)(?:\.(?:0|[1-9]\d*))*")
_DUMMY_NAME = dummy_value("PN")
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_FREE_TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC"})
_EMPTY_ONLY_VRS = frozenset({"PN", "AE", "UR"})
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_IMPLICIT = "1.2.840.10008.1.2"
_EXPLICIT = "1.2.840.10008.1.2.1"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_PATIENT_NAME, _PATIENT_ID, _ACCESSION = 0x00100010, 0x00100020, 0x00080050
_STUDY, _SERIES, _SOP_INSTANCE = 0x0020000D, 0x0020000E, 0x00080018
_IDENTITY_REMOVED, _METHOD, _METHOD_CODES = 0x00120062, 0x00120063, 0x00120064
_LONGITUDINAL = 0x00280303
_CHARSET = 0x00080005
_BURNED_IN, _VISUAL_FEATURES = 0x00280301, 0x00280302
_MARKS = frozenset({_IDENTITY_REMOVED, _METHOD, _METHOD_CODES, _LONGITUDINAL})
#: Words the De-identification Method (0012,0063) may use besides the vocabulary.
_METHOD_WORDS = frozenset({"aifi", "ps3.15", "e.1", "table", "edge", "basic", "profile"})
#: Software that writes Implementation Version Name (0002,0013); a version may follow.
_IMPLEMENTATIONS = re.compile(
    r"(?:AIFI|PYDICOM|OFFIS|DCMTK|ORTHANC|PYNETDICOM|HIGHDICOM)[A-Z_]*[ _]*[0-9A-Z._\-]*",
    re.IGNORECASE,
)


def check_deidentified(ds: pydicom.Dataset, *, vocabulary: Vocabulary | None = None) -> list[str]:
    """Problems that make ``ds`` unfit to store at the hub; empty when it is pseudonymized."""
    buffer = io.BytesIO()
    meta = getattr(ds, "file_meta", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if meta is not None and "TransferSyntaxUID" in meta:
            ds.save_as(buffer, enforce_file_format=True)
            return check_deidentified_bytes(buffer.getvalue(), vocabulary=vocabulary)
        ds.save_as(buffer, implicit_vr=False, little_endian=True)
    checker = _Checker(load_profile(), vocabulary or default_vocabulary())
    return checker.dataset(buffer.getvalue(), 0, _EXPLICIT)


def check_deidentified_file(path: Path, *, vocabulary: Vocabulary | None = None) -> list[str]:
    """Problems of the DICOM Part 10 file at ``path`` (read mapped, never whole into memory)."""
    with Path(path).open("rb") as fp:
        try:
            mapped = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return ["the file is empty; it is not a DICOM Part 10 file"]
        with mapped:
            return check_deidentified_bytes(mapped, vocabulary=vocabulary)


def check_deidentified_bytes(buf: Buffer, *, vocabulary: Vocabulary | None = None) -> list[str]:
    """Problems of a DICOM Part 10 file held in ``buf``; empty when it may be stored."""
    checker = _Checker(load_profile(), vocabulary or default_vocabulary())
    if len(buf) < 132 or bytes(buf[128:132]) != b"DICM":
        return ["not a DICOM Part 10 file: no 'DICM' after the 128-byte preamble"]
    try:
        start, transfer_syntax = checker.file_meta(buf)
    except DicomInputError as exc:
        return [f"the File Meta Information cannot be read: {exc}"]
    try:
        return checker.dataset(buf, start, transfer_syntax)
    except RecursionError:
        return [_TOO_DEEP]


def _where(path: str, tag: int) -> str:
    keyword = keyword_for_tag(tag) or "(unknown attribute)"
    return f"{path}{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass
class _Checker:
    """The walk over one instance: what was found, and the few values judged against others."""

    profile: Profile
    vocabulary: Vocabulary
    problems: list[str] = field(default_factory=list)
    private_groups: set[str] = field(default_factory=set)
    encodings: list[str] = field(default_factory=lambda: ["iso8859"])
    modified_dates: bool = False
    patient_id: str = ""
    meta_instance_uid: str = ""

    # -- File Meta Information (PS3.10 7.1) ----------------------------------------------
    def file_meta(self, buf: Buffer) -> tuple[int, str]:
        reader = Walker(buf, implicit=False)
        pos, transfer_syntax = 132, ""
        while pos + 8 <= len(buf) and int.from_bytes(buf[pos : pos + 2], "little") == 0x0002:
            element = reader.element_at(pos)
            pos = element.vend
            value = reader.value(element).rstrip(b"\0 ").decode("ascii", "replace")
            tag, where = element.tag, _where("File Meta Information > ", element.tag)
            if tag in (0x00020000, 0x00020001):
                continue  # group length, version
            if tag == 0x00020010:
                transfer_syntax = value
                if not value.startswith(_WELL_KNOWN_ROOT):
                    self.problems.append(f"{where} is not a standard transfer syntax; {_FIX}")
            elif tag == 0x00020002 and not value.startswith(_WELL_KNOWN_ROOT):
                self.problems.append(f"{where} is not a standard SOP class; {_FIX}")
            elif tag == 0x00020003:
                self.meta_instance_uid = value
                if not _PSEUDO_UID.fullmatch(value):
                    self.problems.append(
                        f"{where} is not a pseudonymous 2.25 UID: the original UID was kept; {_FIX}"
                    )
            elif tag == 0x00020012 and not _UID_FORM.fullmatch(value):
                self.problems.append(f"{where} is not a UID; {_FIX}")
            elif tag == 0x00020013 and value and not _IMPLEMENTATIONS.fullmatch(value):
                self.problems.append(
                    f"{where} does not name known DICOM software and may name the sender; {_FIX}"
                )
            elif tag not in (0x00020012, 0x00020013, 0x00020002):
                self.problems.append(
                    f"{where} may identify the sender (source AE title, private information) "
                    f"and is not allowed; {_FIX}"
                )
        if not transfer_syntax:
            raise DicomInputError("the file has no Transfer Syntax UID (0002,0010)")
        return pos, transfer_syntax

    # -- the data set -----------------------------------------------------------------
    def dataset(self, buf: Buffer, start: int, transfer_syntax: str) -> list[str]:
        """Problems of the data set at ``start`` (plus any found so far)."""
        if transfer_syntax == _DEFLATED:
            try:
                buf = inflate_bounded(bytes(buf[start:]))
            except PseudonymizationError as exc:
                return [*self.problems, f"the data set {exc}".replace("its deflated ", "")]
            start = 0
        reader = Walker(
            buf, implicit=transfer_syntax == _IMPLICIT, big_endian=transfer_syntax == _BIG_ENDIAN
        )
        try:
            top = list(reader.elements(start, reader.size))
        except WalkError as exc:
            if exc.problem == "too-deep":
                return [_TOO_DEEP]
            return [*self.problems, f"the data set cannot be read to its end: {exc}"]
        except DicomInputError as exc:
            return [*self.problems, f"the data set cannot be read to its end: {exc}"]
        self._first_pass(reader, top)
        try:
            self._items(reader, top, "", top_level=True)
        except DicomInputError as exc:
            self.problems.append(f"a sequence cannot be read: {exc}; {_FIX}")
        if self.private_groups:
            self.problems.append(
                f"private attributes remain (groups {', '.join(sorted(self.private_groups))}); "
                f"all private attributes must be removed; {_FIX}"
            )
        return self.problems

    def _first_pass(self, reader: Walker, top: list[Element]) -> None:
        """The marks and the values other checks depend on; their absence is a problem."""
        by_tag: dict[int, Element] = {}
        for element in top:
            by_tag.setdefault(element.tag, element)

        def text(tag: int) -> str:
            return self._text(reader, by_tag[tag]).strip() if tag in by_tag else ""

        if _CHARSET in by_tag:
            terms = [t.strip() for t in text(_CHARSET).split("\\")]
            try:
                self.encodings = charset.convert_encodings(terms)
            except LookupError:
                self.problems.append(f"{_where('', _CHARSET)} names an unknown character set")
        self.patient_id = text(_PATIENT_ID)
        self.modified_dates = text(_LONGITUDINAL).upper() == "MODIFIED"
        if text(_IDENTITY_REMOVED).upper() != "YES":
            self.problems.append(
                "PatientIdentityRemoved (0012,0062) is not YES: the instance is not marked as "
                f"de-identified; {_FIX}"
            )
        codes: set[str] = set()
        if _METHOD_CODES in by_tag and by_tag[_METHOD_CODES].vr == "SQ":
            for item_start, item_end in reader.items(by_tag[_METHOD_CODES]):
                for inner in reader.elements(item_start, item_end):
                    if inner.tag == 0x00080100:
                        codes.add(self._text(reader, inner).strip())
        if "113100" not in codes:
            self.problems.append(
                "DeidentificationMethodCodeSequence (0012,0064) does not name the Basic "
                f"Application Confidentiality Profile (113100, DCM); {_FIX}"
            )
        if not text(_METHOD):
            self.problems.append(f"DeidentificationMethod (0012,0063) is missing; {_FIX}")
        if _LONGITUDINAL not in by_tag:
            self.problems.append(
                f"LongitudinalTemporalInformationModified (0028,0303) is missing; {_FIX}"
            )
        for tag in (_STUDY, _SERIES, _SOP_INSTANCE):
            if not _PSEUDO_UID.fullmatch(text(tag)):
                self.problems.append(
                    f"{keyword_for_tag(tag)} is not a pseudonymous 2.25 UID: the original UIDs "
                    f"were kept; {_FIX}"
                )
        if self.meta_instance_uid and self.meta_instance_uid != text(_SOP_INSTANCE):
            self.problems.append(
                "MediaStorageSOPInstanceUID (0002,0003) differs from SOPInstanceUID "
                f"(0008,0018); {_FIX}"
            )

    def _items(
        self, reader: Walker, elements: Iterable[Element], path: str, *, top_level: bool
    ) -> None:
        last = -1
        for element in elements:
            if element.tag <= last:
                self.problems.append(
                    f"{_where(path, element.tag)} appears twice or out of tag order (PS3.5 7.1): "
                    f"a second copy can hide a value from a reader; {_FIX}"
                )
            last = max(last, element.tag)
            self._element(reader, element, path, top_level)

    def _element(self, reader: Walker, element: Element, path: str, top_level: bool) -> None:
        tag = element.tag
        if tag & 0x00010000:
            self.private_groups.add(f"{tag >> 16:04X}")
            return
        if not tag & 0xFFFF or (top_level and tag in _PIXEL_TAGS):
            return  # group length; the pixels (judged by the flags below)
        where = _where(path, tag)
        if element.vr == "UN":
            vr = vr_of(tag)
            if vr == "UN":
                self.problems.append(f"{where} is not a standard attribute; {_FIX}")
                return
            inner = Walker(reader.buf, implicit=True, size=reader.size)
            typed_vr = "SQ" if element.undefined else vr
            element = Element(
                tag, typed_vr, element.start, element.vstart, element.vend, element.undefined
            )
            reader = inner
        if tag in _MARKS:
            self._mark(reader, element, where)
        elif element.vr == "SQ":
            self._sequence(reader, element, path, where)
        elif self.profile.rule_for(tag) is not None:
            self._profiled(reader, element, where, top_level)
        elif tag in self.profile.safe or tag in self.profile.on_request:
            self._safe(reader, element, where)
        else:
            self.problems.append(
                f"{where} is not on the hub's allowlist (PS3.15 Table E.1-1 and the safe list) "
                f"and must be removed; {_FIX}"
            )

    def _sequence(self, reader: Walker, element: Element, path: str, where: str) -> None:
        tag = element.tag
        actions = self.profile.actions(tag)
        listed = tag in self.profile.safe or tag in self.profile.on_request
        items = list(reader.items(element))
        if not items:
            return
        if not listed and (not actions or actions <= {"X", "Z"}):
            self.problems.append(f"{where} must be removed or empty (PS3.15 Table E.1-1); {_FIX}")
            return
        inner_path = f"{path}{keyword_for_tag(tag) or f'({tag >> 16:04X},{tag & 0xFFFF:04X})'} > "
        for start, end in items:
            self._items(reader, list(reader.elements(start, end)), inner_path, top_level=False)

    def _profiled(self, reader: Walker, element: Element, where: str, top_level: bool) -> None:
        """An attribute of Table E.1-1: only values its actions (and implemented options) give."""
        tag, vr = element.tag, element.vr
        raw = reader.value(element).rstrip(b"\0 ")
        if tag in (_PATIENT_ID, _ACCESSION) and top_level:
            if raw and not _PSEUDONYM.fullmatch(raw.decode("ascii", "replace")):
                self.problems.append(
                    f"{where} is not a keyed pseudonym: it may be the hospital's own "
                    f"identifier; {_FIX}"
                )
            return
        if not raw:
            return  # action Z, or an empty value
        text = self._text(reader, element).strip()
        if tag == _PATIENT_NAME and top_level and text.rstrip("^") == self.patient_id:
            return  # the pseudonym as family name
        actions = self.profile.actions(tag)
        if "D" in actions and text == dummy_value(vr):
            return
        if "U" in actions and vr == "UI":
            if not all(self._uid_ok(u) for u in text.split("\\")):
                self.problems.append(
                    f"{where} is not a pseudonymous 2.25 UID: the original UID was kept; {_FIX}"
                )
            return
        if vr in ("DA", "DT", "TM"):
            if not ("C" in actions and self.modified_dates and conforms(vr, raw)):
                self.problems.append(
                    f"{where} holds a date or time: dates must be removed, or shifted under the "
                    "Modified Dates option (then Longitudinal Temporal Information Modified "
                    f"(0028,0303) is MODIFIED); {_FIX}"
                )
            return
        if vr == "PN":
            self.problems.append(f"{where} holds a person's name; {_FIX}")
            return
        if "K" in actions and vr not in _FREE_TEXT_VRS and vr not in _EMPTY_ONLY_VRS:
            if vr in FORM_VRS and not conforms(vr, raw):
                self.problems.append(f"{where} does not have the form of its VR {vr}; {_FIX}")
            elif vr == "CS" and not is_clean_descriptor(text, self.vocabulary):
                self.problems.append(f"{where} is not a defined term; {_FIX}")
            return  # a patient characteristic (sex, age, size, weight)
        if actions & {"K", "C"} and vr in _FREE_TEXT_VRS:
            if not all(is_clean_descriptor(p, self.vocabulary) for p in text.split("\\")):
                self.problems.append(
                    f"{where} holds text outside the descriptor vocabulary (Clean Descriptors, "
                    f"PS3.15 E.3.5); {_FIX}"
                )
            return
        if "C" in actions and vr == "CS" and conforms(vr, raw):
            return
        self.problems.append(
            f"{where} identifies the patient or the hospital and must be removed or emptied "
            f"(PS3.15 Table E.1-1); {_FIX}"
        )

    def _safe(self, reader: Walker, element: Element, where: str) -> None:
        """A safe-listed attribute: a value of its VR's form; text only in the vocabulary."""
        tag, vr = element.tag, element.vr
        raw = reader.value(element).rstrip(b"\0 ")
        if not raw:
            return
        if vr in _EMPTY_ONLY_VRS or vr in ("DA", "DT", "TM"):
            self.problems.append(f"{where} must be empty; {_FIX}")
        elif vr == "UI":
            if not all(self._uid_ok(u) for u in raw.decode("ascii", "replace").split("\\")):
                self.problems.append(
                    f"{where} is neither a standard nor a pseudonymous 2.25 UID; {_FIX}"
                )
        elif vr in _FREE_TEXT_VRS:
            keyword = keyword_for_tag(tag)
            values = self._text(reader, element).split("\\")
            if self.profile.text.get(tag) == "code":
                ok = all(is_code(keyword, v, self.vocabulary) for v in values)
            else:
                ok = all(is_clean_descriptor(v, self.vocabulary) for v in values)
            if not ok:
                self.problems.append(
                    f"{where} holds text outside the descriptor vocabulary; {_FIX}"
                )
        elif vr in FORM_VRS and not conforms(vr, raw):
            self.problems.append(f"{where} does not have the form of its VR {vr}; {_FIX}")
        elif vr == "CS" and not is_defined_term(keyword_for_tag(tag), self._text(reader, element)):
            self.problems.append(f"{where} is not one of its defined terms (PS3.3); {_FIX}")
        elif (
            vr == "CS"
            and tag in self.profile.on_request
            and not is_clean_descriptor(self._text(reader, element), self.vocabulary)
        ):
            self.problems.append(f"{where} is not a defined term; {_FIX}")
        elif tag == _BURNED_IN and raw.strip().upper() == b"YES":
            self.problems.append(
                f"{where} is YES: the pixels carry text that may identify the patient; send "
                "a version without annotations"
            )
        elif tag == _VISUAL_FEATURES and raw.strip().upper() == b"YES":
            self.problems.append(f"{where} is YES: the image may show the patient's face")

    def _mark(self, reader: Walker, element: Element, where: str) -> None:
        """The de-identification marks, whose presence :meth:`_first_pass` checked."""
        if element.tag == _METHOD_CODES:
            for start, end in reader.items(element):
                for inner in reader.elements(start, end):
                    text = self._text(reader, inner).strip()
                    if inner.tag == 0x00080100 and text not in CID_7050:
                        self.problems.append(f"{where} holds a code outside CID 7050; {_FIX}")
                    elif inner.tag == 0x00080102 and text != "DCM":
                        self.problems.append(f"{where} holds a scheme other than DCM; {_FIX}")
                    elif inner.tag == 0x00080104 and text not in CID_7050.values():
                        self.problems.append(f"{where} holds a meaning outside CID 7050; {_FIX}")
                    elif inner.tag not in (0x00080100, 0x00080102, 0x00080104, 0x00080103):
                        self.problems.append(
                            f"{_where(where + ' > ', inner.tag)} is not allowed here; {_FIX}"
                        )
            return
        raw = reader.value(element).rstrip(b"\0 ")
        if element.tag == _METHOD:
            if not is_clean_descriptor(
                self._text(reader, element), self.vocabulary | _METHOD_WORDS
            ):
                self.problems.append(
                    f"{where} holds words no de-identification method uses; {_FIX}"
                )
        elif not conforms("CS", raw):
            self.problems.append(f"{where} does not have the form of its VR CS; {_FIX}")

    @staticmethod
    def _uid_ok(uid: str) -> bool:
        uid = uid.strip(" \0")
        return (
            not uid
            or _PSEUDO_UID.fullmatch(uid) is not None
            or (uid.startswith(_WELL_KNOWN_ROOT) and _UID_FORM.fullmatch(uid) is not None)
        )

    def _text(self, reader: Walker, element: Element) -> str:
        raw = reader.value(element).rstrip(b"\0 ")
        if raw.isascii():
            return raw.decode("ascii")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about bytes its codecs replace
            try:
                return charset.decode_bytes(raw, self.encodings, {0x5C})
            except (LookupError, ValueError):
                return raw.decode("latin-1")
