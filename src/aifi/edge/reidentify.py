"""Re-identification of results: back into the patient's own study.

Every UID the pseudonymizer replaced is mapped back, wherever it occurs:
top level and inside any sequence (Referenced SOP Sequence, Current
Requested Procedure Evidence Sequence, Source Image Sequence, SR content
items, ...). UIDs the hub created for the result itself (its SOP Instance
and Series UIDs) are not in the map and stay as they are. The Patient and
General Study modules (PS3.3 C.7.1.1, C.7.2.1) are then restored from an
original instance of the study, so the result files under the same patient,
in the same study, as if a modality had produced it.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

from aifi.deid import PseudonymMap

__all__ = ["PATIENT_STUDY_KEYWORDS", "reidentify"]

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
    purpose = f"deliver results of task {task_id}"

    def restore(dataset: Dataset) -> None:
        for elem in list(dataset):
            if elem.VR == "SQ":
                for item in elem.value:
                    restore(item)
            elif elem.VR == "UI" and elem.value:
                _map_uid_element(elem, pseudonym_map, purpose)

    restore(ds)
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in original:
            ds[keyword] = original[keyword]
        elif keyword in ds:
            del ds[keyword]
    # UTF-8 holds any name the original carried, whatever its character set.
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _map_uid_element(elem: DataElement, pseudonym_map: PseudonymMap, purpose: str) -> None:
    values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
    mapped = []
    for value in values:
        if not str(value).startswith("2.25."):  # pseudonyms are 2.25 UIDs (PS3.5 B.2)
            mapped.append(str(value))
            continue
        original = pseudonym_map.original_uid(str(value), purpose=purpose)
        mapped.append(original if original is not None else str(value))
    elem.value = mapped if isinstance(elem.value, MultiValue) else mapped[0]
