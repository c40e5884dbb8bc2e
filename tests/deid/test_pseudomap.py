"""The map back: encrypted at rest, every lookup recorded, useless without the key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from deid_support import KEY, OTHER_KEY
from pydicom.dataset import Dataset

from aifi.deid import Pseudonymizer, PseudonymMap


def test_uids_map_back_and_each_lookup_is_recorded(tmp_path: Path, instance: Dataset) -> None:
    result = Pseudonymizer(KEY).pseudonymize_dataset(instance)
    store = PseudonymMap(tmp_path / "map.sqlite", KEY)
    store.remember(result.uid_map)

    original = store.original_uids([result.sop_instance_uid], purpose="deliver result", actor="t1")[
        result.sop_instance_uid
    ]
    assert original == instance.SOPInstanceUID
    assert store.original_uids(["2.25.1"], purpose="probe") == {"2.25.1": None}
    lookups = store.lookups()
    assert [(x.actor, x.purpose, x.found) for x in lookups] == [
        ("t1", "deliver result", True),
        ("edge", "probe", False),
    ]
    assert lookups[0].pseudonym == result.sop_instance_uid


def test_originals_are_not_stored_in_clear(tmp_path: Path, instance: Dataset) -> None:
    result = Pseudonymizer(KEY).pseudonymize_dataset(instance)
    store = PseudonymMap(tmp_path / "map.sqlite", KEY)
    store.remember(result.uid_map)
    store.remember_patient(
        result.patient_pseudonym, {"PatientID": "PID-4711", "PatientName": "Doe^Jane"}
    )
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("map.sqlite*"))
    assert str(instance.SOPInstanceUID).encode() not in raw
    assert b"PID-4711" not in raw and b"Doe^Jane" not in raw
    store = PseudonymMap(tmp_path / "map.sqlite", KEY)
    assert store.original_patient(result.patient_pseudonym, purpose="restore patient module") == {
        "PatientID": "PID-4711",
        "PatientName": "Doe^Jane",
    }


def test_another_key_finds_nothing(tmp_path: Path, instance: Dataset) -> None:
    result = Pseudonymizer(KEY).pseudonymize_dataset(instance)
    PseudonymMap(tmp_path / "map.sqlite", KEY).remember(result.uid_map)
    other = PseudonymMap(tmp_path / "map.sqlite", OTHER_KEY)
    assert (
        other.original_uids([result.sop_instance_uid], purpose="attack")[result.sop_instance_uid]
        is None
    )


def test_a_lookup_needs_a_purpose(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="purpose"):
        PseudonymMap(tmp_path / "map.sqlite", KEY).original_uids(["2.25.1"], purpose=" ")


def test_map_file_is_private(tmp_path: Path) -> None:
    PseudonymMap(tmp_path / "map.sqlite", KEY).close()
    assert all(p.stat().st_mode & 0o077 == 0 for p in tmp_path.glob("map.sqlite*"))
    with sqlite3.connect(tmp_path / "map.sqlite") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"uids", "patients", "lookups"} <= tables


def test_many_uids_in_one_lookup_each_recorded(tmp_path: Path, instance: Dataset) -> None:
    result = Pseudonymizer(KEY).pseudonymize_dataset(instance)
    with PseudonymMap(tmp_path / "map.sqlite", KEY) as store:
        store.remember(result.uid_map)
        pseudos = [result.study_instance_uid, result.series_instance_uid, "2.25.7"]
        found = store.original_uids(pseudos, purpose="deliver", actor="task-1")
        assert found == {
            result.study_instance_uid: instance.StudyInstanceUID,
            result.series_instance_uid: instance.SeriesInstanceUID,
            "2.25.7": None,
        }
        assert [x.pseudonym for x in store.lookups()] == pseudos
