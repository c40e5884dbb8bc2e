"""The pseudonymize stage with priors: one patient pseudonym across the current and prior study.

Real files (the hand phantom, as a PACS would hold them), the edge's real
state database and pseudonym map; the stage writes the task's outbox folder
that the upload stage sends (tests/e2e/test_priors.py follows it to the hub).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pydicom

from aifi.deid import PseudonymMap
from aifi.edge.policy import Release
from aifi.edge.pseudonymize import PRIORS_FILE, Pseudonymize
from aifi.edge.state import EdgeState, InstanceRow, TaskRow
from aifi.phantoms.dicom import StudyContext
from aifi.phantoms.hand import bone_age_study
from aifi.phantoms.write import write_study

KEY = b"k" * 32
KEEP = ("PatientSex", "PatientAge", "BodyPartExamined", "ViewPosition", "PixelSpacing")


def received(state: EdgeState, folder: Path, accession: str, date: dt.date, seed: int) -> str:
    """A hand study of one child as the listener would have recorded it; its Study UID."""
    context = StudyContext(
        patient_name="PHANTOM^HAND",
        patient_id="PH-STAGE-1",
        patient_sex="M",
        age_months=120,
        study_date=date,
        accession_number=accession,
        study_description="XR HAND BONE AGE",
    )
    datasets = list(bone_age_study(age_months=120, sex="M", seed=seed, study=context))
    for ds, path in zip(datasets, write_study(datasets, folder), strict=True):
        row = InstanceRow(
            sop_instance_uid=str(ds.SOPInstanceUID),
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            path=path,
            size=path.stat().st_size,
        )
        assert state.add_instance(row, "PACS", {"Modality": "CR"})
    return str(datasets[0].StudyInstanceUID)


def stage(tmp_path: Path, state: EdgeState) -> tuple[Pseudonymize, PseudonymMap, list[str]]:
    failures: list[str] = []
    pseudonym_map = PseudonymMap(tmp_path / "pseudonyms.db", KEY)

    def fail(task: TaskRow, reason: str) -> None:
        failures.append(reason)

    return (
        Pseudonymize(
            state,
            KEY,
            pseudonym_map,
            tmp_path / "outbox",
            lambda algorithm_id: Release(algorithm_id, keep=KEEP),
            fail,
        ),
        pseudonym_map,
        failures,
    )


def requested_task(state: EdgeState, current: str, priors: list[str]) -> str:
    request = state.add_request(current, "bone-age", "test", prior_study_uids=priors)
    sops = [i.sop_instance_uid for i in state.instances(current)]
    task_id = state.create_task(current, "bone-age", "request by test", sops, 0.0)
    state.fulfil_request(request, task_id)
    return task_id


def test_a_prior_is_pseudonymized_with_the_same_patient_pseudonym(tmp_path: Path) -> None:
    state = EdgeState(tmp_path / "edge.db")
    current = received(state, tmp_path / "now", "ACC-1", dt.date(2026, 1, 10), seed=1)
    prior = received(state, tmp_path / "then", "ACC-0", dt.date(2025, 4, 10), seed=2)
    task_id = requested_task(state, current, [prior])
    pseudonymize, pseudonym_map, failures = stage(tmp_path, state)

    pseudonymize.prepare(state.task(task_id))

    task = state.task(task_id)
    assert (task.state, failures) == ("ready", [])
    folder = tmp_path / "outbox" / task_id
    ((pseudo_prior, prior_sops),) = json.loads((folder / PRIORS_FILE).read_text()).items()
    now = pydicom.dcmread(next(folder.glob("*.dcm")))
    then = pydicom.dcmread(folder / "priors" / f"{prior_sops[0]}.dcm")
    assert now.PatientID == then.PatientID != "PH-STAGE-1"  # one patient, one pseudonym
    assert then.StudyInstanceUID == pseudo_prior != now.StudyInstanceUID == task.pseudo_study_uid
    assert prior not in (str(then.StudyInstanceUID), str(then.SOPInstanceUID))
    # the map brings the prior's UIDs back at delivery
    back = pseudonym_map.original_uids([pseudo_prior], purpose="test")
    assert back[pseudo_prior] == prior
    # the prior is not one of the task's own instances
    assert {row.study_instance_uid for row, _p, _d in state.task_instances(task_id)} == {current}
    state.close()


def test_a_prior_whose_files_are_gone_is_left_out_not_fatal(tmp_path: Path) -> None:
    state = EdgeState(tmp_path / "edge.db")
    current = received(state, tmp_path / "now", "ACC-1", dt.date(2026, 1, 10), seed=1)
    prior = received(state, tmp_path / "then", "ACC-0", dt.date(2025, 4, 10), seed=2)
    for row in state.instances(prior):
        row.path.unlink()  # purged by retention, say
    task_id = requested_task(state, current, [prior])
    pseudonymize, _map, failures = stage(tmp_path, state)

    pseudonymize.prepare(state.task(task_id))

    assert (state.task(task_id).state, failures) == ("ready", [])
    assert json.loads((tmp_path / "outbox" / task_id / PRIORS_FILE).read_text()) == {}
    kinds = [e["kind"] for e in state.task_events(task_id)]
    assert "prior-not-sent" in kinds
    state.close()
