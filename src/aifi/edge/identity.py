"""The patient and study identity of a task, kept in the pseudonym map.

When the outbox pseudonymizes a task, the Patient and General Study module
attributes of the original (PS3.3 C.7.1.1, C.7.2.1) go into the encrypted
pseudonym map under the task's pseudonymous Study Instance UID. Delivery
restores them from there, through a recorded lookup, and never reads the
original file again: the originals may be purged long before a late result
comes back, and every use of identity is then in the map's lookup log.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from pydicom import Dataset

from aifi.deid import PseudonymMap
from aifi.edge.reidentify import PATIENT_STUDY_KEYWORDS
from aifi.errors import DeliveryError

__all__ = ["IDENTITY_KEYWORDS", "recall_identity", "remember_identity"]

# The attributes results are filed under (reidentify.PATIENT_STUDY_KEYWORDS),
# plus the Requested Procedure ID the RIS wants (OBR-19).
IDENTITY_KEYWORDS = (*PATIENT_STUDY_KEYWORDS, "RequestedProcedureID")

_KIND = "study-identity:"


def remember_identity(pseudonym_map: PseudonymMap, pseudo_study_uid: str, path: Path) -> None:
    """Store the identity of the original at ``path`` behind ``pseudo_study_uid``."""
    original = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_TAGS))
    identity = Dataset()
    for keyword in IDENTITY_KEYWORDS:
        if keyword in original:
            identity[keyword] = original[keyword]
    # to_json_dict decodes every text with the original's character set
    pseudonym_map.remember_patient(
        _KIND + pseudo_study_uid, {"dicom_json": json.dumps(identity.to_json_dict())}
    )


def recall_identity(pseudonym_map: PseudonymMap, pseudo_study_uid: str, *, purpose: str) -> Dataset:
    """The identity stored for ``pseudo_study_uid``; the lookup is recorded with ``purpose``."""
    record = pseudonym_map.original_patient(_KIND + pseudo_study_uid, purpose=purpose)
    if record is None or "dicom_json" not in record:
        raise DeliveryError(
            f"the pseudonym map holds no identity for pseudonymous study {pseudo_study_uid};"
            " results cannot be filed under the patient (was the map replaced?)"
        )
    return Dataset.from_json(record["dicom_json"])


_TAGS = tuple(
    pydicom.datadict.tag_for_keyword(keyword) or 0
    for keyword in (*IDENTITY_KEYWORDS, "SpecificCharacterSet")
)
