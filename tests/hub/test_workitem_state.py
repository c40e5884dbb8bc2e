"""An outside performer changes a workitem's state at the hub (PS3.18 §11.7, §11.6).

A vendor's remote runner (a principal of role ``performer``) claims a
SCHEDULED workitem of an ``outside_algorithms`` algorithm with a
Transaction UID of its own, reports progress, and completes or cancels it
with the same Transaction UID; the hub's own workers never take it. Runs on
SQLite and PostgreSQL (the ``settings`` fixture), against a running hub.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from aifi.algorithms.base import Algorithm
from aifi.algorithms.integrity_check import ALGORITHM as INTEGRITY_CHECK
from aifi.algorithms.integrity_check import MANIFEST as INTEGRITY_MANIFEST
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions
from aifi.hub.leases import reap
from aifi.hub.models import utcnow
from aifi.protocol.client import HubClient, HubPeer
from aifi.protocol.schemas import Role, TaskState

from .conftest import Hub, add_operator
from .test_workitems import first, workitem

OUTSIDE = "outside-check"


class Outside:
    """The integrity check under another id: an algorithm a vendor performs outside the hub."""

    manifest = dataclasses.replace(INTEGRITY_MANIFEST, id=OUTSIDE, name="Outside (test)")

    def run(self, inputs: Any) -> Any:  # never called: no hub worker takes its tasks
        return INTEGRITY_CHECK.run(inputs)


@pytest.fixture
def test_algorithms() -> dict[str, Algorithm]:
    return {OUTSIDE: Outside()}


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> HubSettings:
    return HubSettings(
        data_dir=tmp_path / "hub-data", workers=2, worker_isolation="thread",
        worker_poll_s=0.05, database_url=database_url, outside_algorithms=[OUTSIDE],
    )  # fmt: skip


@pytest.fixture
def performer_token(settings: HubSettings) -> str:
    return add_operator(settings, "Vendor runner", Role.PERFORMER)


def _state(value: str, transaction: str | None = None, reason: str = "") -> dict[str, Any]:
    ds: dict[str, Any] = {"00741000": {"vr": "CS", "Value": [value]}}
    if transaction is not None:
        ds["00081195"] = {"vr": "UI", "Value": [transaction]}
    if reason:
        ds["00741238"] = {"vr": "LT", "Value": [reason]}
    return ds


def _created(hub: Hub, token: str, study: tuple[str, list[Path]], algorithm: str) -> str:
    study_uid, files = study
    created = hub.client.post(
        "/workitems",
        json=workitem(study_uid, [f.stem for f in files], algorithm=algorithm),
        headers=hub.auth(token),
    )
    assert created.status_code == 201, created.text
    return str(created.headers["location"].rsplit("/", 1)[1])


def _put_state(hub: Hub, token: str, uid: str, ds: dict[str, Any]) -> httpx.Response:
    return hub.client.put(f"/workitems/{uid}/state", json=ds, headers=hub.auth(token))


def _retrieve(hub: Hub, token: str, uid: str) -> dict[str, Any]:
    response = hub.client.get(f"/workitems/{uid}", headers=hub.auth(token))
    assert response.status_code == 200, response.text
    (item,) = response.json()
    return dict(item)


def test_an_outside_performer_claims_reports_and_completes_and_the_edge_sees_it(
    hub: Hub, token_a: str, performer_token: str, study: tuple[str, list[Path]]
) -> None:
    assert hub.stow(token_a, study[1]).status_code == 200
    outside = _created(hub, token_a, study, OUTSIDE)
    inside = _created(hub, token_a, study, "integrity-check")
    tasks = {
        t["client_task_id"]: t for t in hub.client.get("/tasks", headers=hub.auth(token_a)).json()
    }
    assert hub.wait_for_end(token_a, tasks[inside]["id"])["state"] == "COMPLETED"  # workers run
    time.sleep(0.5)  # ten of the workers' polls: none takes the outside workitem
    assert first(_retrieve(hub, token_a, outside), "00741000") == "SCHEDULED"

    found = hub.client.get(
        "/workitems", params={"ProcedureStepState": "SCHEDULED"}, headers=hub.auth(performer_token)
    )
    assert [first(w, "00080018") for w in found.json()] == [outside]  # not the hub's own

    transaction = generate_uid()
    claimed = _put_state(hub, performer_token, outside, _state("IN PROGRESS", transaction))
    assert claimed.status_code == 200, claimed.text
    item = _retrieve(hub, performer_token, outside)
    assert first(item, "00741000") == "IN PROGRESS"
    assert transaction not in str(item)  # PS3.4 CC.2.5.1.2: never returned
    assert transaction not in hub.client.get("/tasks", headers=hub.auth(token_a)).text

    progress = {
        "00081195": {"vr": "UI", "Value": [transaction]},
        "00741002": {
            "vr": "SQ",
            "Value": [
                {
                    "00741004": {"vr": "DS", "Value": [40]},
                    "00741006": {"vr": "ST", "Value": ["reading the series"]},
                }
            ],
        },
    }
    updated = hub.client.post(
        f"/workitems/{outside}", json=progress, headers=hub.auth(performer_token)
    )
    assert updated.status_code == 200, updated.text
    said = first(first(_retrieve(hub, token_a, outside), "00741002"), "00741006")
    assert said == "40 % reading the series"

    time.sleep(0.3)  # the hub's workers still leave it alone while it is claimed
    assert first(_retrieve(hub, token_a, outside), "00741000") == "IN PROGRESS"

    completed = _put_state(hub, performer_token, outside, _state("COMPLETED", transaction))
    assert completed.status_code == 200, completed.text
    edge = HubClient(HubPeer(url=str(hub.client.base_url), token=token_a))
    try:
        seen = edge.task(tasks[outside]["id"])
        assert seen.state == TaskState.COMPLETED
        assert seen.reason is None
        assert seen.id in {t.id for t in edge.unacknowledged_tasks()}
    finally:
        edge.close()
    again = _put_state(hub, performer_token, outside, _state("COMPLETED", transaction))
    assert again.status_code == 200
    assert "0xB306" in again.headers["warning"]  # already in the requested state


def test_the_transaction_uid_and_the_state_decide_each_change(
    hub: Hub, token_a: str, performer_token: str, study: tuple[str, list[Path]]
) -> None:
    assert hub.stow(token_a, study[1]).status_code == 200
    uid = _created(hub, token_a, study, OUTSIDE)
    transaction = generate_uid()

    early = _put_state(hub, performer_token, uid, _state("COMPLETED", transaction))
    assert early.status_code == 409 and "0xC310" in early.headers["warning"]
    missing = _put_state(hub, performer_token, uid, _state("IN PROGRESS"))
    assert missing.status_code == 400 and "0xC301" in missing.headers["warning"]
    scheduled = _put_state(hub, performer_token, uid, _state("SCHEDULED", transaction))
    assert scheduled.status_code == 409 and "0xC303" in scheduled.headers["warning"]
    odd = _put_state(hub, performer_token, uid, {**_state("IN PROGRESS", transaction),
                     "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]}})  # fmt: skip
    assert odd.status_code == 400 and "(0010,0010)" in odd.json()["detail"]

    assert (
        _put_state(hub, performer_token, uid, _state("IN PROGRESS", transaction)).status_code == 200
    )
    twice = _put_state(hub, performer_token, uid, _state("IN PROGRESS", generate_uid()))
    assert twice.status_code == 409 and "0xC302" in twice.headers["warning"]
    wrong = _put_state(hub, performer_token, uid, _state("COMPLETED", generate_uid()))
    assert wrong.status_code == 400
    assert "0xC301" in wrong.headers["warning"] and "Transaction UID" in wrong.json()["detail"]
    bad_update = hub.client.post(
        f"/workitems/{uid}",
        json={"00081195": {"vr": "UI", "Value": [transaction]},
              "00741200": {"vr": "CS", "Value": ["HIGH"]}},
        headers=hub.auth(performer_token),
    )  # fmt: skip
    assert bad_update.status_code == 400 and "(0074,1200)" in bad_update.json()["detail"]
    stranger = hub.client.post(
        f"/workitems/{uid}",
        json={"00081195": {"vr": "UI", "Value": [generate_uid()]}},
        headers=hub.auth(performer_token),
    )
    assert stranger.status_code == 400 and "0xC301" in stranger.headers["warning"]

    canceled = _put_state(
        hub, performer_token, uid, _state("CANCELED", transaction, reason="series incomplete")
    )
    assert canceled.status_code == 200, canceled.text
    item = _retrieve(hub, token_a, uid)
    assert first(item, "00741000") == "CANCELED"
    assert "series incomplete" in first(first(item, "00741002"), "00741238")
    after = _put_state(hub, performer_token, uid, _state("COMPLETED", transaction))
    assert after.status_code == 409 and "0xC300" in after.headers["warning"]
    hospital_view = hub.client.get("/tasks", headers=hub.auth(token_a)).json()
    assert [t["state"] for t in hospital_view] == ["CANCELED"]


def test_only_a_performer_changes_state_and_it_sees_only_outside_work(
    hub: Hub, token_a: str, performer_token: str, study: tuple[str, list[Path]]
) -> None:
    assert hub.stow(token_a, study[1]).status_code == 200
    outside = _created(hub, token_a, study, OUTSIDE)
    inside = _created(hub, token_a, study, "integrity-check")
    as_hospital = _put_state(hub, token_a, outside, _state("IN PROGRESS", generate_uid()))
    assert as_hospital.status_code == 403
    not_outside = _put_state(hub, performer_token, inside, _state("IN PROGRESS", generate_uid()))
    assert not_outside.status_code == 404 and "0xC307" in not_outside.headers["warning"]
    assert (
        hub.client.get(f"/workitems/{inside}", headers=hub.auth(performer_token)).status_code == 404
    )
    creates = hub.client.post(
        "/workitems", json=workitem(study[0], [f.stem for f in study[1]]),
        headers=hub.auth(performer_token),
    )  # fmt: skip
    assert creates.status_code == 403


def test_a_silent_performer_loses_its_claim_to_the_janitor(
    hub: Hub, token_a: str, performer_token: str, study: tuple[str, list[Path]]
) -> None:
    assert hub.stow(token_a, study[1]).status_code == 200
    uid = _created(hub, token_a, study, OUTSIDE)
    transaction = generate_uid()
    assert (
        _put_state(hub, performer_token, uid, _state("IN PROGRESS", transaction)).status_code == 200
    )

    engine = make_engine(hub.settings.effective_database_url)
    try:
        with make_sessions(engine)() as session:
            assert reap(session, max_attempts=3).requeued == []  # its claim lasts an hour
            silent = utcnow() + timedelta(seconds=hub.settings.performer_lease_s + 1)
            assert len(reap(session, max_attempts=3, now=silent).requeued) == 1
    finally:
        engine.dispose()

    assert first(_retrieve(hub, token_a, uid), "00741000") == "SCHEDULED"
    late = _put_state(hub, performer_token, uid, _state("COMPLETED", transaction))
    assert late.status_code == 409 and "0xC310" in late.headers["warning"]
    time.sleep(0.3)  # back in the queue, and still not for the hub's workers
    assert first(_retrieve(hub, token_a, uid), "00741000") == "SCHEDULED"
    again = _put_state(hub, performer_token, uid, _state("IN PROGRESS", generate_uid()))
    assert again.status_code == 200
