"""What every result builder takes from its sources, and what it writes whatever they hold.

* **One character set for every result**: Specific Character Set (0008,0005)
  ISO_IR 192 (UTF-8, PS3.3 C.12.1.1.2, PS3.5 6.1.2.3). The sources may come
  in any character set a modality writes (ISO 2022 IR 87/149/58 with code
  extensions, GB18030, Latin-1, ...) and highdicom refuses several of them;
  the values copied from the sources (the patient's name, descriptions) are
  read as text with the sources' own character set and written again as
  UTF-8, so no character set makes a result fail and no character is lost.
  ISO 2022 escape sequences that the reader left in the text (pydicom does
  not remove the G1 designation ESC $ ) A of ISO 2022 IR 58) are removed:
  in UTF-8 they mean nothing (PS3.5 6.1.2.5).
* **Type 2 attributes present**: Patient's Birth Date, Patient's Sex,
  Accession Number, Study ID, Study Date and Time and Referring Physician's
  Name are Type 2 in the Patient and General Study Modules (PS3.3 C.7.1.1,
  C.7.2.1) of every result; a source without them (pseudonymization may have
  removed them) gives them empty, rather than failing the result.
* **Distinct Series Numbers**: :func:`series_numbers` gives each result
  series of a study its own number, also across algorithms and re-runs.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import pydicom
from pydicom.valuerep import PersonName

__all__ = [
    "RESULT_CHARACTER_SET",
    "check_sources",
    "series_numbers",
    "source_header",
]

RESULT_CHARACTER_SET = "ISO_IR 192"
"""Specific Character Set of every result object: UTF-8."""

_TYPE_2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_TEXT_VRS = ("PN", "LO", "SH", "ST", "LT", "UT", "UC")
_ESCAPE = re.compile("\x1b[\x20-\x2f]*[\x30-\x7e]")
"""An ISO 2022 escape sequence (ISO/IEC 2022 §13: ESC, intermediates, final byte)."""
_SERIES_BASE = 900000
_SLOTS = 1000
_PER_ALGORITHM = 100


def check_sources(sources: Sequence[pydicom.Dataset]) -> dict[str, pydicom.Dataset]:
    """The sources by SOP Instance UID; ``ValueError`` when empty or of several studies."""
    if not sources:
        raise ValueError("sources must hold at least one image of the study")
    study_uids = {str(ds.StudyInstanceUID) for ds in sources}
    if len(study_uids) != 1:
        raise ValueError(f"sources must belong to one study, not {len(study_uids)}")
    return {str(ds.SOPInstanceUID): ds for ds in sources}


def source_header(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The source's header without pixel data, Type 2 patient/study attributes present.

    Text values keep their characters (decoded with the source's character
    set); the header's own Specific Character Set is UTF-8 like the results.
    ``filename`` stays, so that a builder can still read the pixel data.
    """
    header = pydicom.Dataset()
    for element in ds:
        if element.keyword in _PIXEL_KEYWORDS:
            continue
        header.add(element)
        if element.VR in _TEXT_VRS and _has_escape(element.value):
            header[element.tag].value = _without_escapes(element.value, element.VR)
    for keyword in _TYPE_2_KEYWORDS:
        if keyword not in header or header[keyword].value is None:
            setattr(header, keyword, "")
    header.SpecificCharacterSet = RESULT_CHARACTER_SET
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    filename = getattr(ds, "filename", None)
    if filename is not None:
        header.filename = filename
    return header


def _has_escape(value: object) -> bool:
    values = value if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
    return any("\x1b" in str(item) for item in values if item is not None)


def _without_escapes(value: object, vr: str) -> object:
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return [_without_escapes(item, vr) for item in value]
    text = _ESCAPE.sub("", str(value))
    return PersonName(text) if vr == "PN" else text


def series_numbers(algorithm_id: str, *, earlier: int = 0, count: int = 1) -> list[int]:
    """Series Numbers for ``count`` new result series of ``algorithm_id`` on one study.

    The number reads ``9AAANN``: ``AAA`` is a slot derived from the
    algorithm id (CRC-32, so every hub and re-run agrees without
    coordination, and the results of different algorithms on one study
    differ even though each algorithm sees the study under its own
    pseudonymous UIDs), ``NN`` counts the result series the hub already made
    for this algorithm on this study (``earlier``), so a re-run does not
    reuse its predecessor's numbers. High numbers list results after the
    images in PACS viewers. Two algorithms whose ids share a slot (1 in
    1000 per pair) and more than 100 result series of one algorithm on one
    study repeat numbers; Series Number need not be unique (PS3.3 C.7.3.1),
    so that is a cosmetic, not a structural, collision.
    """
    if count < 0 or earlier < 0:
        raise ValueError("earlier and count must not be negative")
    slot = zlib.crc32(algorithm_id.encode("utf-8")) % _SLOTS
    base = _SERIES_BASE + slot * _PER_ALGORITHM
    return [base + (earlier + index) % _PER_ALGORITHM for index in range(count)]
