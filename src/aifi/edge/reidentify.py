"""Re-identification of results: back into the patient's own study.

Every UID the pseudonymizer replaced is mapped back, wherever it occurs:
top level and inside any sequence (Referenced SOP Sequence, Current
Requested Procedure Evidence Sequence, Source Image Sequence, SR content
items, ...). UIDs the hub created for the result itself (its SOP Instance
and Series UIDs) are not in the map and stay as they are. The Patient and
General Study modules (PS3.3 C.7.1.1, C.7.2.1) are then restored from an
original instance of the study, so the result files under the same patient,
in the same study, as if a modality had produced it.

A re-identified result is an identified object and must not say otherwise:
the de-identification marks the pseudonymized input carried (Patient
Identity Removed, De-identification Method and its Code Sequence,
Longitudinal Temporal Information Modified; PS3.15 E.1.1, PS3.3 C.7.1.1)
are removed, as they would be wrong next to the real name.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

from aifi.deid import PseudonymMap

__all__ = ["DEIDENTIFICATION_MARKS", "PATIENT_STUDY_KEYWORDS", "reidentify"]

# Attributes that state an object was de-identified (PS3.15 E.1.1 item 6).
DEIDENTIFICATION_MARKS = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)

# Patient module and General Study module attributes restored from the original.
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "EthnicGroup",
    "PatientComments",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDescription",
)


def reidentify(
    ds: Dataset, pseudonym_map: PseudonymMap, original: Dataset, *, task_id: str
) -> Dataset:
    """Map every pseudonymous UID back and restore patient and study from ``original``."""
    uid_elements = [
        elem for elem in ds.iterall() if elem.VR == "UI" and elem.value not in (None, "")
    ]
    pseudos = {
        str(value)
        for elem in uid_elements
        for value in (elem.value if isinstance(elem.value, MultiValue) else [elem.value])
        if str(value).startswith("2.25.")  # pseudonyms are 2.25 UIDs (PS3.5 B.2)
    }
    originals = pseudonym_map.original_uids(
        sorted(pseudos), purpose=f"deliver results of task {task_id}"
    )
    for elem in uid_elements:
        _map_uid_element(elem, originals)
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in original:
            ds[keyword] = original[keyword]
        elif keyword in ds:
            del ds[keyword]
    for keyword in DEIDENTIFICATION_MARKS:
        if keyword in ds:
            del ds[keyword]
    # UTF-8 holds any name the original carried, whatever its character set.
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _map_uid_element(elem: DataElement, originals: Mapping[str, str | None]) -> None:
    if isinstance(elem.value, MultiValue):
        elem.value = [originals.get(str(v)) or str(v) for v in elem.value]
    else:
        elem.value = originals.get(str(elem.value)) or str(elem.value)
