"""Keyed pseudonyms: deterministic per hospital key, different across hospitals."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from deid_support import KEY, OTHER_KEY, make_instance, pseudonymize
from pydicom.uid import UID

from aifi.deid import load_or_create_key, pseudo_uid
from aifi.errors import ConfigError


def test_pseudo_uid_is_a_valid_2_25_uid() -> None:
    uid = pseudo_uid(KEY, "1.2.840.113619.2.55.3.604688119.971.1234567890.123")
    assert uid.startswith("2.25.") and len(uid) <= 64 and UID(uid).is_valid
    assert uid == pseudo_uid(KEY, "1.2.840.113619.2.55.3.604688119.971.1234567890.123")
    assert uid != pseudo_uid(OTHER_KEY, "1.2.840.113619.2.55.3.604688119.971.1234567890.123")


def test_same_patient_same_pseudonym_and_shift_across_studies() -> None:
    from aifi.deid import DeidOptions

    options = DeidOptions(retain_longitudinal_modified_dates=True)
    first = pseudonymize(make_instance(study_date="20200101"), options=options)
    second = pseudonymize(make_instance(study_date="20240101"), options=options)
    assert first.PatientID == second.PatientID
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert int(second.StudyDate) - int(first.StudyDate) == 40000  # same shift: same interval
    other = pseudonymize(make_instance(study_date="20200101"), options=options, key=OTHER_KEY)
    assert other.PatientID != first.PatientID
    assert other.StudyDate != first.StudyDate
    assert pseudonymize(make_instance(patient_id="PID-1")).PatientID != first.PatientID


def test_same_study_gives_same_uids_when_sent_again() -> None:
    ds = make_instance()
    assert pseudonymize(ds).SOPInstanceUID == pseudonymize(ds).SOPInstanceUID


def test_key_file_is_created_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "edge" / "key.bin"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key


def test_a_damaged_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.bin"
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="32"):
        load_or_create_key(path)
