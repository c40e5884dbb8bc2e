"""The hub's check: does an instance still carry identity? (PS3.15 Annex E as a gate).

:func:`check_deidentified` returns one sentence per problem, each naming the
attribute (keyword and tag) and what the hospital's IT can do, never the
value. An empty list means the instance may be stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from aifi.deid.values import dummy_value

__all__ = ["check_deidentified"]

#: Attributes that identify the patient directly and must be absent or empty.
_MUST_BE_EMPTY = (
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
    "MedicalRecordLocator",
    "MilitaryRank",
    "BranchOfService",
    "RegionOfResidence",
    "CountryOfResidence",
    "PatientReligiousPreference",
    "AdmissionID",
    "ServiceEpisodeID",
    "InsurancePlanIdentification",
    "ReferencedPatientPhotoSequence",
    "InstitutionAddress",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "PersonAddress",
    "PersonTelephoneNumbers",
    "PersonTelecomInformation",
    "IssuerOfPatientID",
)
_PSEUDONYMOUS_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_FIX = "pseudonymize it with the aifi edge before sending"
#: What :func:`aifi.deid.keys.pseudonym` produces: 16 characters of upper-case base32.
_PSEUDONYM = re.compile(r"[A-Z2-7]{16}")
#: The dummy value of action D for person names (Table E.1-1), which carries no identity.
_DUMMY_NAME = dummy_value("PN")


def _tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"


def _walk(ds: Dataset, path: str = "") -> Iterator[tuple[str, Dataset, BaseTag]]:
    for tag in list(ds.keys()):
        yield path, ds, tag
        if tag.is_private:
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item, f"{path}{elem.keyword or _tag_text(tag)} > ")


def check_deidentified(ds: pydicom.Dataset) -> list[str]:
    """Problems that make ``ds`` unfit to store at the hub; empty when it is pseudonymized."""
    problems: list[str] = []
    if str(ds.get("PatientIdentityRemoved", "") or "").strip().upper() != "YES":
        problems.append(
            f"PatientIdentityRemoved (0012,0062) is not YES: the instance is not marked as "
            f"de-identified; {_FIX}"
        )
    codes = {
        str(item.get("CodeValue", ""))
        for item in ds.get("DeidentificationMethodCodeSequence", None) or []
    }
    if "113100" not in codes:
        problems.append(
            "DeidentificationMethodCodeSequence (0012,0064) does not name the Basic "
            f"Application Confidentiality Profile (113100, DCM); {_FIX}"
        )
    if not str(ds.get("DeidentificationMethod", "") or "").strip():
        problems.append(f"DeidentificationMethod (0012,0063) is missing; {_FIX}")
    if "LongitudinalTemporalInformationModified" not in ds:
        problems.append(f"LongitudinalTemporalInformationModified (0028,0303) is missing; {_FIX}")
    patient_id = str(ds.get("PatientID", "") or "")
    for keyword, tag_text in (("PatientID", "(0010,0020)"), ("AccessionNumber", "(0008,0050)")):
        value = str(ds.get(keyword, "") or "").strip()
        if value and not _PSEUDONYM.fullmatch(value):
            problems.append(
                f"{keyword} {tag_text} is not a keyed pseudonym: it may be the hospital's "
                f"own identifier; {_FIX}"
            )
    for keyword in _PSEUDONYMOUS_UIDS:
        uid = str(ds.get(keyword, "") or "")
        if not uid.startswith("2.25."):
            problems.append(
                f"{keyword} is not a pseudonymous 2.25 UID: the original UIDs were kept; {_FIX}"
            )
    private_groups: set[str] = set()
    for path, item, tag in _walk(ds):
        if tag.is_private:
            private_groups.add(f"{tag.group:04X}")
            continue
        elem = item[tag]
        where = f"{path}{elem.keyword or _tag_text(tag)} {_tag_text(tag)}"
        if elem.keyword in _MUST_BE_EMPTY and not elem.is_empty:
            problems.append(f"{where} identifies the patient and must be removed; {_FIX}")
        elif (
            elem.VR == "PN"
            and not elem.is_empty
            and str(elem.value) != _DUMMY_NAME
            and not (tag == 0x00100010 and str(elem.value).rstrip("^") == patient_id and path == "")
        ):
            problems.append(f"{where} holds a person's name; {_FIX}")
    if private_groups:
        problems.append(
            f"private attributes remain (groups {', '.join(sorted(private_groups))}); "
            f"all private attributes must be removed; {_FIX}"
        )
    return problems
