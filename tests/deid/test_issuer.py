"""Patient pseudonyms key on (Issuer of Patient ID, Patient ID) (PS3.3 C.7.1.1).

A Patient ID is unique only within the system that issued it: two hospitals
of one group may each have a patient "12345". Without the issuer they would
become one pseudonym, and the hub would join two people's images.
"""

from __future__ import annotations

from deid_support import KEY, make_instance

from aifi.deid import Pseudonymizer


def pseudonym_of(issuer: str | None, patient_id: str = "12345") -> str:
    ds = make_instance(patient_id=patient_id)
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    result = Pseudonymizer(KEY).pseudonymize_dataset(ds)
    assert result.dataset is not None
    assert result.dataset.PatientID == result.patient_pseudonym
    assert "IssuerOfPatientID" not in result.dataset or not result.dataset.IssuerOfPatientID
    return result.patient_pseudonym


def test_same_patient_id_from_different_issuers_gives_different_pseudonyms() -> None:
    assert pseudonym_of("HOSPITAL-A") != pseudonym_of("HOSPITAL-B")


def test_the_same_issuer_and_id_always_give_the_same_pseudonym() -> None:
    assert pseudonym_of("HOSPITAL-A") == pseudonym_of("HOSPITAL-A")


def test_without_an_issuer_the_pseudonym_is_what_it_always_was() -> None:
    # an edge upgraded from an earlier release keeps its patients' pseudonyms
    assert pseudonym_of(None) == pseudonym_of("") != pseudonym_of("HOSPITAL-A")
