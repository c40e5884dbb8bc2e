"""Priors at the hub: a task names earlier studies of the same pseudonymous patient (issue 14).

The hub checks them (the algorithm asks for priors; the same hospital
uploaded them; the same pseudonymous Patient ID), records them as task inputs
of role ``prior``, shows them in ``GET /tasks/{id}``, hands them to the
algorithm, and the SR lists them as other evidence (PS3.3 C.17.2.3).
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import select

from aifi.algorithms.base import AlgorithmInput, Findings, ImageFinding, Manifest, Priors
from aifi.hub.db import make_engine, make_sessions
from aifi.hub.models import TaskInput

from .conftest import Hub, new_uid, pseudonymized, split_multipart


class Compares:
    """Asks for one prior; reports which prior instances it was given."""

    manifest = Manifest(
        id="compares",
        version="0.1",
        name="compares with the prior",
        vendor="tests",
        intended_use="tests",
        regulatory_status="none",
        accepts=(),
        produces=("sr",),
        priors=Priors(years=2, max_studies=1),
    )

    def run(self, inputs: AlgorithmInput) -> Findings:
        return Findings(
            summary=f"{len(inputs.priors)} prior studies",
            images=(ImageFinding(sop_instance_uid=inputs.instances[0].sop_instance_uid),),
            details={
                "priors": {
                    p.study_instance_uid: sorted(i.sop_instance_uid for i in p.instances)
                    for p in inputs.priors
                }
            },
        )


@pytest.fixture
def test_algorithms() -> dict[str, Any]:
    return {"compares": Compares()}


def study_files(folder: Path, n: int = 2, *, patient: str | None = None) -> tuple[str, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = new_uid(), new_uid()
    files = [
        pseudonymized("CT_small.dcm", folder, study=study_uid, series=series_uid) for _ in range(n)
    ]
    if patient is not None:  # another pseudonymous patient
        for path in files:
            ds = pydicom.dcmread(path)
            ds.PatientID = patient
            ds.save_as(path, enforce_file_format=True)
    return study_uid, files


def uids(files: list[Path]) -> list[str]:
    return [f.stem for f in files]


def create(
    hub: Hub,
    token: str,
    current: tuple[str, list[Path]],
    priors: list[tuple[str, list[Path]]],
    *,
    algorithm: str = "compares",
) -> httpx.Response:
    return hub.client.post(
        "/tasks",
        json={
            "client_task_id": uuid.uuid4().hex,
            "algorithm_id": algorithm,
            "study_instance_uid": current[0],
            "sop_instance_uids": uids(current[1]),
            "prior_studies": [
                {"study_instance_uid": s, "sop_instance_uids": uids(f)} for s, f in priors
            ],
        },
        headers=hub.auth(token),
    )


def test_a_prior_of_the_same_patient_reaches_the_algorithm_and_the_sr(
    hub: Hub, token_a: str, dicom_dir: Path
) -> None:
    current = study_files(dicom_dir / "now")
    prior = study_files(dicom_dir / "then")
    for files in (current[1], prior[1]):
        assert hub.stow(token_a, files).status_code == 200
    response = create(hub, token_a, current, [prior])
    assert response.status_code == 201, response.text
    task = hub.wait_for_end(token_a, response.json()["id"])
    assert task["state"] == "COMPLETED", task["reason"]
    assert task["findings"]["details"]["priors"] == {prior[0]: sorted(uids(prior[1]))}
    assert task["prior_studies"] == [
        {"study_instance_uid": prior[0], "sop_instance_uids": sorted(uids(prior[1]))}
    ]
    assert task["study_instance_uid"] == current[0]

    (ref,) = task["results"]
    answer = hub.client.get(
        f"/dicomweb/studies/{ref['study_instance_uid']}/series/{ref['series_instance_uid']}"
        f"/instances/{ref['sop_instance_uid']}",
        headers={**hub.auth(token_a), "Accept": 'multipart/related; type="application/dicom"'},
    )
    assert answer.status_code == 200
    (part,) = split_multipart(answer.content, answer.headers["content-type"])
    sr = pydicom.dcmread(io.BytesIO(part))
    assert sr.StudyInstanceUID == current[0]  # the result joins the current study
    (current_evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert current_evidence.StudyInstanceUID == current[0]
    (other,) = sr.PertinentOtherEvidenceSequence  # PS3.3 C.17.2.3
    assert other.StudyInstanceUID == prior[0]
    listed = {
        i.ReferencedSOPInstanceUID
        for s in other.ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    }
    assert listed == set(uids(prior[1]))

    # the UPS-RS view (PS3.18 §11.5): Input Information Sequence, the study first, then the prior
    workitem = hub.client.get(
        f"/workitems/{task['client_task_id']}",
        headers={**hub.auth(token_a), "Accept": "application/dicom+json"},
    )
    assert workitem.status_code == 200, workitem.text
    (item,) = workitem.json() if isinstance(workitem.json(), list) else [workitem.json()]
    inputs = item["00404021"]["Value"]
    assert [i["0020000D"]["Value"][0] for i in inputs] == [current[0], prior[0]]
    assert {r["00081155"]["Value"][0] for r in inputs[1]["00081199"]["Value"]} == set(
        uids(prior[1])
    )

    engine = make_engine(hub.settings.effective_database_url)
    try:
        with make_sessions(engine)() as session:
            roles = [
                r.role
                for r in session.scalars(select(TaskInput).where(TaskInput.task_id == task["id"]))
            ]
    finally:
        engine.dispose()
    assert sorted(roles) == ["current"] * 2 + ["prior"] * 2


def test_a_prior_of_another_pseudonymous_patient_is_refused(
    hub: Hub, token_a: str, dicom_dir: Path
) -> None:
    current = study_files(dicom_dir / "now")
    other = study_files(dicom_dir / "other", patient="OTHERPSEUDQNYMAA")
    for files in (current[1], other[1]):
        assert hub.stow(token_a, files).status_code == 200
    response = create(hub, token_a, current, [other])
    assert response.status_code == 422
    assert "not of the same pseudonymous patient" in response.json()["detail"]


def test_another_hospitals_study_is_no_prior(
    hub: Hub, token_a: str, token_b: str, dicom_dir: Path
) -> None:
    current = study_files(dicom_dir / "now")
    theirs = study_files(dicom_dir / "theirs")  # the same pseudonym, but hospital B's upload
    assert hub.stow(token_a, current[1]).status_code == 200
    assert hub.stow(token_b, theirs[1]).status_code == 200
    response = create(hub, token_a, current, [theirs])
    assert response.status_code == 422
    assert "were not uploaded by this hospital" in response.json()["detail"]


def test_priors_for_an_algorithm_that_asks_for_none_or_too_many_are_refused(
    hub: Hub, token_a: str, dicom_dir: Path
) -> None:
    current = study_files(dicom_dir / "now")
    first, second = study_files(dicom_dir / "p1"), study_files(dicom_dir / "p2")
    for files in (current[1], first[1], second[1]):
        assert hub.stow(token_a, files).status_code == 200
    response = create(hub, token_a, current, [first], algorithm="integrity-check")
    assert response.status_code == 422
    assert "does not take prior studies" in response.json()["detail"]
    response = create(hub, token_a, current, [first, second])
    assert response.status_code == 422
    assert "at most 1 prior studies" in response.json()["detail"]
    response = create(hub, token_a, current, [current])
    assert response.status_code == 422
    assert "is the current study" in response.json()["detail"]
