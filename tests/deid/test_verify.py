"""The hub's check: an instance that was not pseudonymized is refused with actionable reasons."""

from __future__ import annotations

from deid_support import KEY
from pydicom.dataset import Dataset

from aifi.deid import Pseudonymizer, check_deidentified


def test_an_original_instance_gets_reasons_naming_attributes_not_values(instance: Dataset) -> None:
    instance.OtherPatientIDs = "OTHER-99"
    instance.add_new(0x00291010, "LO", "private")
    problems = check_deidentified(instance)
    text = " ".join(problems)
    for expected in (
        "PatientID (0010,0020) is not a keyed pseudonym",
        "AccessionNumber (0008,0050) is not a keyed pseudonym",
        "PatientIdentityRemoved",
        "DeidentificationMethodCodeSequence",
        "PatientBirthDate",
        "OtherPatientIDs",
        "StudyInstanceUID",
        "private attributes remain (groups 0029)",
    ):
        assert expected in text
    for value in ("PID-4711", "Doe", "20120310", "OTHER-99", str(instance.StudyInstanceUID)):
        assert value not in text
    assert all("pseudonymize" in p for p in problems)


def test_a_pseudonymized_instance_passes(instance: Dataset) -> None:
    result = Pseudonymizer(KEY).pseudonymize_dataset(instance)
    assert result.dataset is not None
    assert check_deidentified(result.dataset) == []


def test_a_name_nested_in_a_sequence_is_found(instance: Dataset) -> None:
    result = Pseudonymizer(KEY).pseudonymize_dataset(instance)
    assert result.dataset is not None
    item = Dataset()
    item.PersonName = "Smith^John"
    result.dataset.ContentSequence = [item]
    assert any("ContentSequence > PersonName" in p for p in check_deidentified(result.dataset))
