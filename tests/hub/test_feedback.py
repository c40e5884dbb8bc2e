"""Readers' verdicts (IHE AIRAI) through the API, and a scripted month that drifts.

The month is written straight into the hub's database -- tasks, their input
instances with acquisition figures, and verdicts, with timestamps spread
over 30 days -- as a hub in service would have recorded them; the API then
answers agreement rates and flags the version whose last week differs from
its first two.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from aifi.hub.db import make_engine, make_sessions
from aifi.hub.models import (
    Feedback,
    Hospital,
    InputStatistics,
    Instance,
    Task,
    TaskInput,
)
from aifi.protocol.schemas import TaskState

from .conftest import Hub, new_uid, pseudonymized

NOW = datetime.now(UTC)
FINDING = {"code_value": "72704001", "scheme": "SCT", "meaning": "Fracture"}


def _completed_task(hub: Hub, token: str, folder: Path) -> str:
    study = new_uid()
    files = [pseudonymized("CT_small.dcm", folder, study=study)]
    assert hub.stow(token, files).status_code == 200
    created = hub.create_task(token, study, [f.stem for f in files])
    assert created.status_code == 201, created.text
    task = hub.wait_for_end(token, created.json()["id"])
    assert task["state"] == TaskState.COMPLETED
    return str(task["id"])


def test_a_verdict_is_recorded_replaced_and_counted(
    hub: Hub, token_a: str, token_b: str, operator_token: str, dicom_dir: Path
) -> None:
    task_id = _completed_task(hub, token_a, dicom_dir)
    url = f"/tasks/{task_id}/feedback"

    agreed = hub.client.post(url, json={"verdict": "agree"}, headers=hub.auth(token_a))
    assert agreed.status_code == 200, agreed.text
    assert agreed.json()["verdict"] == "agree"
    assert agreed.json()["algorithm_id"] == "integrity-check"

    correction = {
        "code_value": "72704001",
        "coding_scheme_designator": "SCT",
        "code_meaning": "Fracture",
    }
    changed = hub.client.post(
        url, json={"verdict": "disagree", "correction": correction}, headers=hub.auth(token_a)
    )
    assert changed.status_code == 200
    read = hub.client.get(url, headers=hub.auth(token_a)).json()
    assert read["verdict"] == "disagree" and read["correction"] == correction

    rows = hub.client.get("/feedback/agreement/mine", headers=hub.auth(token_a)).json()
    assert [(r["verdicts"], r["agree"], r["agreement_rate"]) for r in rows] == [(1, 0, 0.0)]
    assert hub.client.get("/feedback/agreement/mine", headers=hub.auth(token_b)).json() == []

    # the verdict carries no identity: any field beyond verdict and correction is refused
    for extra in (
        {"verdict": "agree", "reader": "Dr. House"},
        {"verdict": "agree", "patient_id": "123456"},
        {"verdict": "agree", "correction": {**correction, "comment": "Mrs X"}},
        {"verdict": "maybe"},
        {"verdict": "agree", "correction": {**correction, "code_meaning": "a\\b"}},
    ):
        refused = hub.client.post(url, json=extra, headers=hub.auth(token_a))
        assert refused.status_code == 422, extra
    # another hospital cannot judge A's task, nor read its verdict
    assert (
        hub.client.post(url, json={"verdict": "agree"}, headers=hub.auth(token_b)).status_code
        == 404
    )
    assert hub.client.get(url, headers=hub.auth(token_b)).status_code == 404
    # the operator reads agreement across hospitals, and the audit trail has each verdict
    everyone = hub.client.get("/feedback/agreement", headers=hub.auth(operator_token)).json()
    assert [r["hospital"] for r in everyone] == ["Hospital A"]
    events = hub.client.get(
        "/audit", params={"action": "feedback.recorded"}, headers=hub.auth(operator_token)
    ).json()
    assert [e["detail"]["verdict"] for e in events] == ["agree", "disagree"]
    assert all("Dr." not in str(e) for e in events)


def test_no_verdict_on_a_task_that_has_not_completed(
    hub: Hub, token_a: str, settings: object, dicom_dir: Path
) -> None:
    task_id = _completed_task(hub, token_a, dicom_dir)
    engine = make_engine(hub.settings.effective_database_url)
    with make_sessions(engine)() as session:
        task = session.get(Task, task_id)
        assert task is not None
        task.state, task.reason = TaskState.CANCELED.value, "model refused"
        session.commit()
    engine.dispose()
    answer = hub.client.post(
        f"/tasks/{task_id}/feedback", json={"verdict": "agree"}, headers=hub.auth(token_a)
    )
    assert answer.status_code == 409
    assert "completed" in answer.json()["detail"]


def _script_month(hub: Hub, hospital_name: str) -> None:
    """30 days of two fracture versions: 1.0 steady, 2.0 drifting in its last week.

    Version 2.0's last week: positive rate from ~20 % to ~60 %, a new
    manufacturer and a lower kVp, readers agreeing half the time instead of 90 %.
    """
    engine = make_engine(hub.settings.effective_database_url)
    with make_sessions(engine)() as session:
        hospital_id = session.scalar(select(Hospital.id).where(Hospital.name == hospital_name))
        assert hospital_id is not None
        for version in ("1.0.0", "2.0.0"):
            for day in range(30):
                for n in range(5):
                    at = NOW - timedelta(days=29 - day, hours=1 + 4 * n)
                    late = version == "2.0.0" and day >= 23
                    positive = n < 3 if late else n == 0  # 60 % late, else 20 %
                    agrees = n < 2 or (n == 2 and day % 2 == 0) if late else n < 4 or day % 2 == 0
                    task = Task(
                        id=uuid.uuid4().hex,
                        hospital_id=hospital_id,
                        client_task_id=uuid.uuid4().hex,
                        algorithm_id="fracture",
                        algorithm_version=version,
                        study_instance_uid=new_uid(),
                        state=TaskState.COMPLETED.value,
                        findings={"summary": "", "finding": FINDING if positive else None},
                        acknowledged=True,
                        created_at=at,
                        updated_at=at,
                    )
                    sop = new_uid()
                    instance = Instance(
                        hospital_id=hospital_id,
                        study_instance_uid=task.study_instance_uid,
                        series_instance_uid=new_uid(),
                        sop_instance_uid=sop,
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                        object_key=f"instances/{sop}",
                        size=1000,
                        received_at=at,
                        purged_at=at,
                    )
                    session.add_all([task, instance])
                    session.flush()
                    session.add(TaskInput(task_id=task.id, instance_id=instance.id))
                    session.add(
                        InputStatistics(
                            hospital_id=hospital_id,
                            sop_instance_uid=sop,
                            modality="DX",
                            manufacturer="NewVendor" if late else ("Acme", "Bolt")[n % 2],
                            kvp=52.0 + n if late else 70.0 + n,
                            pixel_spacing_mm=0.143 if late else 0.139,
                            received_at=at,
                        )
                    )
                    session.add(
                        Feedback(
                            task_id=task.id,
                            hospital_id=hospital_id,
                            algorithm_id="fracture",
                            algorithm_version=version,
                            verdict="agree" if agrees else "disagree",
                            recorded_at=at + timedelta(hours=2),
                        )
                    )
        session.commit()
    engine.dispose()


def test_a_scripted_month_yields_agreement_and_flags_the_drifted_version(
    hub: Hub, token_a: str, operator_token: str
) -> None:
    _script_month(hub, "Hospital A")
    as_op = hub.auth(operator_token)

    rows = hub.client.get(
        "/feedback/agreement", params={"algorithm_id": "fracture"}, headers=as_op
    ).json()
    by_version = {r["algorithm_version"]: r for r in rows}
    assert by_version.keys() == {"1.0.0", "2.0.0"}
    assert all(r["verdicts"] == 150 for r in rows)
    assert by_version["1.0.0"]["agreement_rate"] == pytest.approx(0.9)
    assert by_version["2.0.0"]["agreement_rate"] < by_version["1.0.0"]["agreement_rate"]
    steady = by_version["1.0.0"]
    assert steady["agree"] + steady["disagree"] == steady["verdicts"]

    reports = {r["algorithm_version"]: r for r in hub.client.get("/drift", headers=as_op).json()}
    assert reports["1.0.0"]["flagged"] is False, reports["1.0.0"]
    drifted = reports["2.0.0"]
    assert drifted["flagged"] is True
    assert set(drifted["flags"]) == {"positive_rate", "agreement", "manufacturer", "kvp"}
    figures = {f["name"]: f for f in drifted["figures"]}
    assert figures["positive_rate"]["baseline"] < 0.35 < 0.45 < figures["positive_rate"]["recent"]
    assert figures["manufacturer"]["change"] == pytest.approx(1.0)  # a vendor never seen before
    assert not figures["pixel_spacing"]["flagged"]  # 3 % wider: inside the 20 % bound

    # the console shows the flag, and /metrics exports it
    metrics = hub.client.get("/metrics").text
    assert 'aifi_hub_drift_flag{algorithm="fracture",figure="kvp",version="2.0.0"} 1.0' in metrics
    assert 'aifi_hub_drift_flag{algorithm="fracture",figure="kvp",version="1.0.0"} 0.0' in metrics
    assert "aifi_hub_drift_flagged_versions 1.0" in metrics
