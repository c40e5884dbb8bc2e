"""Apply the profile to one encoded dataset: the small code that executes Table E.1-1.

PS3.15 E.1.1: every attribute of Table E.1-1 gets its action, recursively in
every sequence item; all private attributes are removed; attributes the
table does not list pass only when they are on the safe list (or named by
the algorithm's manifest and on the safe list's "on request" part);
everything else, unknown and retired attributes included, is removed. Then
the instance is marked (PS3.15 E.1.1 step 6; PS3.3 C.7.1.1 Patient Identity
Removed, De-identification Method (Code Sequence); PS3.3 C.7.6.1
Longitudinal Temporal Information Modified).

There is no raw channel: every sequence is walked whatever its VR (a
sequence sent as UN, of defined or undefined length, is read as implicit VR
little endian, PS3.5 6.2.2, or removed when it cannot be); no text passes
raw: a kept or safe-listed text value is reduced to the descriptor
vocabulary (:mod:`aifi.deid.descriptors`) or checked to be a code, and a
coded string, number, age or time passes only when it has its VR's form.
Binary values (US, FL, OB, ...) are copied as they are.

The engine works on bytes (:mod:`aifi.deid.encoding`): an element that
passes unchanged is copied without being decoded, and the walk stops at
Pixel Data, which the caller copies as it is (nothing after it is copied).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom import charset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from aifi.deid import keys, values
from aifi.deid.defined_terms import is_defined_term
from aifi.deid.descriptors import Vocabulary, clean_descriptor, is_clean_descriptor, is_code
from aifi.deid.options import CID_7050, DeidOptions
from aifi.deid.profile import Profile, load_profile
from aifi.dicom.encode import SWAP_WIDTH, encode_element, encode_sequence, swap
from aifi.dicom.walker import Element, Walker, vr_of
from aifi.errors import ConfigError, DicomInputError

__all__ = ["NEVER_KEEP", "PIXEL_TAGS", "ProfileRun", "resolve_keep"]

logger = logging.getLogger(__name__)

#: Attributes a manifest may never ask to keep: they identify the patient directly.
NEVER_KEEP = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthName",
        "PatientMotherBirthName",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientTelecomInformation",
        "IssuerOfPatientID",
        "MedicalRecordLocator",
        "AccessionNumber",
        "AdmissionID",
        "ReferencedPatientPhotoSequence",
        "ResponsiblePerson",
        "PersonName",
    }
)
#: Float, double float and integer Pixel Data: the walk stops at the first of them.
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: Free text: reduced to the descriptor vocabulary whenever it is kept.
_FREE_TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC"})
#: Never kept, whatever the list says: names, AE titles, addresses, unknown content.
_NEVER_COPIED_VRS = frozenset({"PN", "AE", "UR", "UN"})
_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})
_DATES_FOR_AGE = (0x00080020, 0x00080021, 0x00080022, 0x00080023)  # Study, Series, Acq., Content
_CHARSET = 0x00080005
_TIMEZONE = 0x00080201
_PATIENT_NAME, _PATIENT_ID, _ACCESSION = 0x00100010, 0x00100020, 0x00080050
_ISSUER = 0x00100021  # Issuer of Patient ID
_BIRTH_DATE, _PATIENT_AGE = 0x00100030, 0x00101010
_SOP_INSTANCE, _STUDY, _SERIES, _SOP_CLASS = 0x00080018, 0x0020000D, 0x0020000E, 0x00080016
#: Kept once even when sent twice: UIDs are replaced, the character set must stay.
_REQUIRED = frozenset({_SOP_INSTANCE, _STUDY, _SERIES, _SOP_CLASS, _CHARSET})
_SUMMARY = {
    "BurnedInAnnotation": 0x00280301,
    "RecognizableVisualFeatures": 0x00280302,
    "SOPClassUID": _SOP_CLASS,
    "Modality": 0x00080060,
}


def resolve_keep(keep: Iterable[str], profile: Profile | None = None) -> frozenset[int]:
    """Tags of the keywords an algorithm's manifest asks to keep; refuse identifying ones.

    A keyword the profile cannot vet (neither safe-listed nor kept or cleaned by
    Table E.1-1 under an implemented option, e.g. StationName) is not kept: it is
    logged and left to the profile, which removes it.
    """
    profile = profile or load_profile()
    tags: set[int] = set()
    for keyword in keep:
        tag = tag_for_keyword(keyword)
        if keyword in NEVER_KEEP or (tag is not None and dictionary_VR(tag) == "PN"):
            raise ConfigError(
                f"keep names {keyword}, which identifies the patient or a person; "
                "remove it from the algorithm's manifest (bone age needs PatientAge, "
                "never PatientBirthDate)"
            )
        if tag is None:
            raise ConfigError(
                f"keep names {keyword!r}, which is not a DICOM keyword; fix the manifest"
            )
        if dictionary_VR(tag) in ("UI", "DA", "DT", "TM"):
            raise ConfigError(
                f"keep names {keyword}, a UID, date or time: UIDs are always replaced and dates "
                "removed; use the Modified Dates option or PatientAge instead"
            )
        if not profile.keepable(tag):
            logger.warning(
                "keep names %s, which the profile cannot vet (not on the safe list, not kept or "
                "cleaned by Table E.1-1): it is removed as the profile says",
                keyword,
            )
            continue
        tags.add(tag)
    return frozenset(tags)


@dataclass
class ProfileRun:
    """Pseudonymization of one instance: the state shared while walking its dataset."""

    key: bytes
    options: DeidOptions
    keep: frozenset[int]
    profile: Profile = field(default_factory=load_profile)
    uid_map: dict[str, str] = field(default_factory=dict)
    shift_days: int | None = None
    patient_pseudonym: str = ""
    encodings: list[str] = field(default_factory=lambda: ["iso8859"])
    #: tag -> decision, shared by the runs of one Pseudonymizer (same options and keep)
    decisions: dict[int, str] = field(default_factory=dict)
    #: words a cleaned text may keep; None is the packaged vocabulary
    vocabulary: Vocabulary | None = None
    #: whether what is written is implicit VR (as the top-level dataset read)
    out_implicit: bool = False

    # -- entry point -----------------------------------------------------------
    def top_level(self, reader: Walker, start: int) -> tuple[list[Element], Element | None]:
        """The top-level elements before Pixel Data, and the Pixel Data element if any."""
        found: list[Element] = []
        for element in reader.elements(start, reader.size):
            if element.tag in PIXEL_TAGS:
                return found, element
            if element.tag > 0x7FE00010:
                break
            found.append(element)
        return found, None

    def summary(self, reader: Walker, elements: list[Element]) -> dict[str, str]:
        """A few top-level values the caller checks (burned-in text, UIDs), by keyword."""
        by_tag = {e.tag: e for e in elements}
        wanted = {
            **_SUMMARY,
            "SOPInstanceUID": _SOP_INSTANCE,
            "StudyInstanceUID": _STUDY,
            "SeriesInstanceUID": _SERIES,
        }
        found = {
            keyword: self._text(reader, by_tag[tag], ascii_only=True).strip()  # UI and CS
            for keyword, tag in wanted.items()
            if tag in by_tag
        }
        # An overlay described (60xx,0010) without Overlay Data (60xx,3000) lives in unused
        # bits of Pixel Data (retired, PS3.5 8.1.2); removing its description hides it only.
        overlays = {e.tag >> 16 for e in elements if (e.tag >> 16) & 0xFF01 == 0x6000}
        with_data = {e.tag >> 16 for e in elements if e.tag & 0xFF01FFFF == 0x60003000}
        if overlays - with_data:
            found["EmbeddedOverlay"] = "YES"
        return found

    def rewrite(self, reader: Walker, elements: list[Element]) -> bytes:
        """The pseudonymized top-level dataset (in tag order), marks added."""
        by_tag = {e.tag: e for e in elements}
        if _CHARSET in by_tag:
            terms = self._text(reader, by_tag[_CHARSET], ascii_only=True).split("\\")
            self.encodings = charset.convert_encodings([t.strip() for t in terms])
        original_id = (
            self._text(reader, by_tag[_PATIENT_ID]).strip() if _PATIENT_ID in by_tag else ""
        )
        if original_id:  # an ID is unique only within its issuer (PS3.3 C.7.1.1)
            issuer = self._text(reader, by_tag[_ISSUER]).strip() if _ISSUER in by_tag else ""
            patient_key = f"{issuer}\\{original_id}" if issuer else original_id
            self.patient_pseudonym = keys.pseudonym(self.key, "patient", patient_key)
        else:  # no ID: one pseudonym per study, never one shared by all ID-less patients
            study = self._text(reader, by_tag[_STUDY]).strip() if _STUDY in by_tag else ""
            self.patient_pseudonym = keys.pseudonym(self.key, "patient-without-id", study)
            patient_key = "study:" + study
        if self.options.retain_longitudinal_modified_dates:
            self.shift_days = keys.date_shift_days(self.key, patient_key)
        self.out_implicit = reader.implicit
        out: dict[int, bytes] = {}
        twice = _repeated(elements)
        for element in elements:
            if element.tag in twice:
                continue
            encoded = self._element(reader, element)
            if encoded is not None:
                out[element.tag] = encoded
        self._identifiers(reader, by_tag, out)
        self._mark(out, reader.implicit)
        return b"".join(out[tag] for tag in sorted(out))

    # -- one element -----------------------------------------------------------
    def decide(self, tag: int) -> str:
        """What happens to ``tag``: ``drop``, ``keep`` (manifest), ``safe``, or a table action."""
        decision = self.decisions.get(tag)
        if decision is None:
            if tag & 0x00010000 or tag >> 16 in (0x0000, 0x0002) or not tag & 0xFFFF:
                decision = "drop"  # private, command or file meta group, group length
            elif tag in self.keep:
                decision = "keep-listed" if self.profile.rule_for(tag) else "keep"
            elif (rule := self.profile.rule_for(tag)) is not None:
                decision = rule.action(self.options)
            else:
                decision = "safe" if self.profile.is_safe(tag) else "drop"
            self.decisions[tag] = decision
        return decision

    def _element(self, reader: Walker, element: Element) -> bytes | None:
        decision = self.decide(element.tag)
        if decision == "drop":
            return None
        if element.vr == "UN":
            return self._unknown_vr(reader, element, decision)
        return self._decided(reader, element, decision)

    def _decided(self, reader: Walker, element: Element, decision: str) -> bytes | None:
        if decision in ("keep", "keep-listed", "safe"):
            if element.vr == "SQ":
                return self._sequence(reader, element)
            return self._vetted(reader, element)  # needed, but never copied unchecked
        return self._act(reader, element, decision)

    def _unknown_vr(self, reader: Walker, element: Element, decision: str) -> bytes | None:
        """An element sent with VR UN: read as its dictionary VR, a sequence as implicit VR.

        PS3.5 6.2.2: the value of a UN element is encoded as implicit VR little
        endian; a sequence of undefined length sent as UN is always a sequence.
        What cannot be read so is removed.
        """
        vr = vr_of(element.tag)
        if vr == "UN":
            return None  # not in the dictionary: nothing can say what it holds
        inner = Walker(reader.buf, implicit=True, size=reader.size)
        if element.undefined or vr == "SQ":
            as_sequence = Element(
                element.tag, "SQ", element.start, element.vstart, element.vend, element.undefined
            )
            try:
                return self._decided(inner, as_sequence, decision)
            except DicomInputError:
                logger.info("a sequence sent as UN cannot be read; it is removed")
                return None
        typed = Element(element.tag, vr, element.start, element.vstart, element.vend, False)
        return self._decided(inner, typed, decision)

    def _vetted(self, reader: Walker, element: Element) -> bytes | None:
        """A kept or safe-listed element: binary values as they are, text reduced, forms checked."""
        vr = element.vr
        if vr in _NEVER_COPIED_VRS:
            return None
        if vr in _FREE_TEXT_VRS:
            if element.vstart == element.vend:
                return self._raw(reader, element)
            if self.profile.text.get(element.tag) == "code":
                text = self._text(reader, element)
                keyword = keyword_for_tag(element.tag)
                if all(is_code(keyword, v, self.vocabulary) for v in text.split("\\")):
                    return self._raw(reader, element)
                return None
            return self._clean(reader, element)
        if vr in ("DA", "DT", "TM"):
            return None  # dates and times pass only shifted (action C, Modified Dates)
        value = reader.value(element)
        if vr in values.FORM_VRS and not values.conforms(vr, value):
            return None
        if vr == "CS" and not is_defined_term(
            keyword_for_tag(element.tag), value.rstrip(b"\0 ").decode("ascii")
        ):
            return None  # a value the Standard does not define for it (PS3.3)
        if vr == "CS" and element.tag not in self.profile.safe:
            # asked for by an algorithm (body part, view, sex): defined terms, not any string
            text = value.rstrip(b"\0 ").decode("ascii")
            if not is_clean_descriptor(text, self.vocabulary):
                return None
        return self._raw(reader, element)

    def _act(self, reader: Walker, element: Element, action: str) -> bytes | None:
        tag, vr, implicit = element.tag, element.vr, self.out_implicit
        if action == "X":
            return None
        if vr == "SQ" or element.undefined:
            if action == "Z":
                return encode_sequence(tag, [], implicit=implicit)
            return self._sequence(reader, element)  # D, U (U*), K, C: apply inside items
        if action == "Z":
            return encode_element(tag, vr, b"", implicit=implicit)
        if action == "D":
            dummy = values.dummy_value(vr)
            return encode_element(tag, vr, dummy.encode("ascii"), implicit=implicit)
        if action == "U":
            return self._uids(reader, element)
        if action == "C":
            return self._clean(reader, element)
        return self._vetted(reader, element)  # K

    def _raw(self, reader: Walker, element: Element) -> bytes:
        """The element unchanged: its bytes, or re-encoded (from big endian, from UN)."""
        if reader.implicit == self.out_implicit and not reader.big_endian:
            return bytes(reader.buf[element.start : element.vend])
        value = reader.value(element)
        if reader.big_endian:
            value = swap(value, SWAP_WIDTH.get(element.vr, 1))
        return encode_element(element.tag, element.vr, value, implicit=self.out_implicit)

    def _sequence(self, reader: Walker, element: Element) -> bytes:
        items = []
        for start, end in reader.items(element):
            parts = []
            found = list(reader.elements(start, end))
            twice = _repeated(found)
            for inner in found:
                if inner.tag in twice:
                    continue
                encoded = self._element(reader, inner)
                if encoded is not None:
                    parts.append(encoded)
            items.append(b"".join(parts))
        return encode_sequence(element.tag, items, implicit=self.out_implicit)

    def _uids(self, reader: Walker, element: Element) -> bytes | None:
        if element.vr not in {"UI", "UN"}:
            return None
        text = self._text(reader, element, ascii_only=True)
        uids = [u.strip(" \0") for u in text.split("\\")]
        mapped = "\\".join(self.map_uid(u) if u else "" for u in uids)
        return encode_element(element.tag, "UI", mapped.encode("ascii"), implicit=self.out_implicit)

    def map_uid(self, uid: str) -> str:
        """The pseudonymous UID for ``uid`` (remembered in :attr:`uid_map`)."""
        uid = uid.strip(" \0")
        new = self.uid_map.get(uid)
        if new is None:
            new = self.uid_map[uid] = keys.pseudo_uid(self.key, uid)
        return new

    def _clean(self, reader: Walker, element: Element) -> bytes | None:
        """Action C: dates shifted, times kept, text reduced to the descriptor vocabulary."""
        vr, implicit = element.vr, self.out_implicit
        if element.vstart == element.vend:
            return self._raw(reader, element)
        if vr == "DA":
            shifted = values.shift_date(self._text(reader, element, True), self.shift_days or 0)
            return encode_element(element.tag, vr, shifted.encode("ascii"), implicit=implicit)
        if vr == "DT":
            text = self._text(reader, element, True)
            shifted = values.shift_datetime(text, self.shift_days or 0)
            return encode_element(element.tag, vr, shifted.encode("ascii"), implicit=implicit)
        if vr == "TM" or element.tag == _TIMEZONE:  # times of day and offsets survive a shift
            return self._raw(reader, element)
        if vr == "CS":
            ok = values.conforms(vr, reader.value(element))
            return self._raw(reader, element) if ok else None
        if vr not in _FREE_TEXT_VRS:
            return None  # names, numbers or binary under a clean action: remove
        text = self._text(reader, element)
        parts = [text] if vr in _SINGLE_VALUED else text.split("\\")
        cleaned = "\\".join(clean_descriptor(p, self.vocabulary) for p in parts).strip("\\")
        value = charset.encode_string(cleaned, self.encodings)
        return encode_element(element.tag, vr, value, implicit=implicit)

    def _text(self, reader: Walker, element: Element, ascii_only: bool = False) -> str:
        raw = reader.value(element).rstrip(b"\0 ")
        if ascii_only:
            return raw.decode("ascii", errors="replace")
        return charset.decode_bytes(raw, self.encodings, {0x5C})

    # -- identifiers, age, marks -------------------------------------------------
    def _identifiers(
        self, reader: Walker, by_tag: dict[int, Element], out: dict[int, bytes]
    ) -> None:
        implicit = self.out_implicit
        pseudonym = self.patient_pseudonym.encode("ascii")
        out[_PATIENT_ID] = encode_element(_PATIENT_ID, "LO", pseudonym, implicit=implicit)
        # The pseudonym as family name, the caret making it one (PS3.5 §6.2.1.2).
        name = pseudonym + b"^"
        out[_PATIENT_NAME] = encode_element(_PATIENT_NAME, "PN", name, implicit=implicit)
        if _ACCESSION in by_tag and _ACCESSION not in self.keep:
            accession = self._text(reader, by_tag[_ACCESSION]).strip()
            value = keys.pseudonym(self.key, "accession", accession) if accession else ""
            out[_ACCESSION] = encode_element(_ACCESSION, "SH", value.encode(), implicit=implicit)
        wants_age = _PATIENT_AGE in self.keep or self.options.retain_patient_characteristics
        if wants_age:
            given = self._text(reader, by_tag[_PATIENT_AGE], True) if _PATIENT_AGE in by_tag else ""
            age = values.cap_age(given.strip() or self._age(reader, by_tag) or "")
            if age:
                out[_PATIENT_AGE] = encode_element(
                    _PATIENT_AGE, "AS", age.encode(), implicit=implicit
                )

    def _age(self, reader: Walker, by_tag: dict[int, Element]) -> str | None:
        """PatientAge from birth date and study (or series, acquisition, content) date."""
        if _BIRTH_DATE not in by_tag:
            return None
        birth = self._text(reader, by_tag[_BIRTH_DATE], True)
        for tag in _DATES_FOR_AGE:
            if tag in by_tag:
                on = self._text(reader, by_tag[tag], True).strip()
                if on:
                    return values.age_string(birth, on)
        return None

    def _mark(self, out: dict[int, bytes], implicit: bool) -> None:
        codes = tuple(self.options.codes())
        out.update(_marks(codes, self.shift_days is not None, implicit, self.profile.version))


def _repeated(elements: list[Element]) -> frozenset[int]:
    """Tags present twice in one data set (malformed, PS3.5 7.1): every copy is removed,
    since which one a reader sees is up to the reader. Identifiers and UIDs are written anew."""
    if len({e.tag for e in elements}) == len(elements):
        return frozenset()
    seen: set[int] = set()
    twice: set[int] = set()
    for element in elements:
        (twice if element.tag in seen else seen).add(element.tag)
    return frozenset(twice - _REQUIRED)


@functools.cache
def _marks(
    codes: tuple[str, ...], modified: bool, implicit: bool, version: str
) -> dict[int, bytes]:
    """The de-identification marks (PS3.3 C.7.1.1, C.7.6.1), encoded once per combination."""
    items = [
        encode_element(0x00080100, "SH", code.encode(), implicit=implicit)
        + encode_element(0x00080102, "SH", b"DCM", implicit=implicit)
        + encode_element(0x00080104, "LO", CID_7050[code].encode(), implicit=implicit)
        for code in codes
    ]
    method = f"aifi PS3.15 E.1-1 Basic Profile, table v{version}".encode()
    longitudinal = b"MODIFIED" if modified else b"REMOVED"
    return {
        0x00120062: encode_element(0x00120062, "CS", b"YES", implicit=implicit),
        0x00120063: encode_element(0x00120063, "LO", method, implicit=implicit),
        0x00120064: encode_sequence(0x00120064, items, implicit=implicit),
        0x00280303: encode_element(0x00280303, "CS", longitudinal, implicit=implicit),
    }
