"""An outside performer changes a workitem's state at the hub (PS3.18 §11.7, §11.6).

A vendor's remote runner (a principal of role ``performer``) claims a
SCHEDULED workitem of an ``outside_algorithms`` algorithm with a
Transaction UID of its own, reads its inputs at their Retrieve URL, reports
progress, hands in its findings and completes it (the hub makes the SR and
GSPS of those findings, which the edge fetches), or cancels it, with the
same Transaction UID; the hub's own workers never take it. Runs on SQLite
and PostgreSQL (the ``settings`` fixture), against a running hub.
"""

from __future__ import annotations

import dataclasses
import io
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
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

from .conftest import Hub, add_operator, new_uid, pseudonymized, split_multipart
from .test_workitems import first, workitem

OUTSIDE = "outside-check"


class Outside:
    """The integrity check under another id: an algorithm a vendor performs outside the hub."""

    manifest = dataclasses.replace(
        INTEGRITY_MANIFEST, id=OUTSIDE, name="Outside (test)", produces=("sr", "gsps")
    )

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


def _findings(sop: str, summary: str = "nodule 7 mm, upper left") -> dict[str, Any]:
    """The findings document a performer hands in (aifi.algorithms.findings_json)."""
    return {
        "summary": summary,
        "urgent": True,
        "images": [
            {
                "sop_instance_uid": sop,
                "boxes": [{"x0": 10, "y0": 12, "x1": 40, "y1": 44, "label": "nodule",
                           "score": 0.93}],
            }
        ],
    }  # fmt: skip


def _hand_in(
    hub: Hub, token: str, uid: str, document: Any, transaction: str | None
) -> httpx.Response:
    headers = hub.auth(token) | ({"Transaction-UID": transaction} if transaction else {})
    return hub.client.put(f"/workitems/{uid}/findings", json=document, headers=headers)


def _texts(ds: pydicom.Dataset) -> list[str]:
    """Every TEXT value of an SR content tree."""
    found = [str(ds.TextValue)] if "TextValue" in ds else []
    for item in ds.get("ContentSequence", []):
        found += _texts(item)
    return found


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

    # it reads its inputs where the workitem says (Retrieve URL), with its Transaction UID
    (given,) = _retrieve(hub, performer_token, outside)["00404021"]["Value"]
    assert {first(r, "00081155") for r in given["00081199"]["Value"]} == {f.stem for f in study[1]}
    url = first(given, "00081190")
    read = hub.client.get(url, headers=hub.auth(performer_token) | {"Transaction-UID": transaction})
    assert read.status_code == 200, read.text
    parts = split_multipart(read.content, read.headers["content-type"])
    assert sorted(pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID for p in parts) == sorted(
        f.stem for f in study[1]
    )
    assert "00081190" not in str(_retrieve(hub, token_a, outside))  # the hospital uses WADO-RS

    early = _put_state(hub, performer_token, outside, _state("COMPLETED", transaction))
    assert early.status_code == 409 and "0xC304" in early.headers["warning"]  # no findings yet
    assert "findings" in early.json()["detail"]
    sop = study[1][0].stem
    handed = _hand_in(hub, performer_token, outside, _findings(sop), transaction)
    assert handed.status_code == 204, handed.text

    completed = _put_state(hub, performer_token, outside, _state("COMPLETED", transaction))
    assert completed.status_code == 200, completed.text
    edge = HubClient(HubPeer(url=str(hub.client.base_url), token=token_a))
    try:
        seen = edge.task(tasks[outside]["id"])
        assert seen.state == TaskState.COMPLETED
        assert seen.reason is None and seen.urgent
        assert seen.id in {t.id for t in edge.unacknowledged_tasks()}
        assert sorted(r.kind for r in seen.results) == ["gsps", "sr"]
        assert seen.findings is not None
        assert seen.findings["details"]["performer"]["name"] == "Vendor runner"
        (sr_ref,) = [r for r in seen.results if r.kind == "sr"]
        sr = pydicom.dcmread(io.BytesIO(edge.retrieve_instance(
            sr_ref.study_instance_uid, sr_ref.series_instance_uid, sr_ref.sop_instance_uid
        )))  # fmt: skip
        (gsps_ref,) = [r for r in seen.results if r.kind == "gsps"]
        gsps = pydicom.dcmread(io.BytesIO(edge.retrieve_instance(
            gsps_ref.study_instance_uid, gsps_ref.series_instance_uid, gsps_ref.sop_instance_uid
        )))  # fmt: skip
    finally:
        edge.close()
    assert sr.StudyInstanceUID == study[0]
    assert "nodule 7 mm, upper left" in _texts(sr)  # the performer's finding
    assert OUTSIDE in {e.ManufacturerModelName for e in sr.ContributingEquipmentSequence}
    (marked,) = gsps.ReferencedSeriesSequence[0].ReferencedImageSequence
    assert marked.ReferencedSOPInstanceUID == sop  # the box, on the image the performer named
    outputs = first(_retrieve(hub, token_a, outside), "00741216")["00404033"]["Value"]
    listed = {first(r, "00081155") for series in outputs for r in series["00081199"]["Value"]}
    assert listed == {sr.SOPInstanceUID, gsps.SOPInstanceUID}  # Output Information Sequence
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


def test_findings_and_inputs_need_the_claim_and_must_read(
    hub: Hub, token_a: str, performer_token: str, study: tuple[str, list[Path]], dicom_dir: Path
) -> None:
    assert hub.stow(token_a, study[1]).status_code == 200
    other_uid = new_uid()
    other = (other_uid, [pseudonymized("CT_small.dcm", dicom_dir, study=other_uid)])
    assert hub.stow(token_a, other[1]).status_code == 200  # the hospital's, not the workitem's
    uid = _created(hub, token_a, study, OUTSIDE)
    sop = study[1][0].stem
    transaction = generate_uid()

    def read(study_uid: str, given: str | None) -> httpx.Response:
        headers = hub.auth(performer_token) | ({"Transaction-UID": given} if given else {})
        return hub.client.get(f"/workitems/{uid}/studies/{study_uid}", headers=headers)

    unclaimed = _hand_in(hub, performer_token, uid, _findings(sop), transaction)
    assert unclaimed.status_code == 409 and "0xC310" in unclaimed.headers["warning"]
    assert read(study[0], transaction).status_code == 409  # nobody holds it: nothing to read
    assert (
        _put_state(hub, performer_token, uid, _state("IN PROGRESS", transaction)).status_code == 200
    )

    wrong = _hand_in(hub, performer_token, uid, _findings(sop), generate_uid())
    assert wrong.status_code == 400 and "0xC301" in wrong.headers["warning"]
    missing = _hand_in(hub, performer_token, uid, _findings(sop), None)
    assert missing.status_code == 400 and "0xC301" in missing.headers["warning"]
    assert read(study[0], generate_uid()).status_code == 400
    assert read(study[0], None).status_code == 400
    assert read(other[0], transaction).status_code == 404  # only the workitem's inputs
    series = pydicom.dcmread(study[1][0]).SeriesInstanceUID
    instance = hub.client.get(
        f"/workitems/{uid}/studies/{study[0]}/series/{series}/instances/{sop}",
        headers=hub.auth(performer_token) | {"Transaction-UID": transaction},
    )
    assert instance.status_code == 200
    assert len(split_multipart(instance.content, instance.headers["content-type"])) == 1
    as_hospital = hub.client.get(
        f"/workitems/{uid}/studies/{study[0]}",
        headers=hub.auth(token_a) | {"Transaction-UID": transaction},
    )
    assert as_hospital.status_code == 403

    malformed = _hand_in(hub, performer_token, uid, {"summary": 7}, transaction)
    assert malformed.status_code == 422
    assert "findings.summary must be a string" in malformed.json()["detail"]
    stranger = _hand_in(hub, performer_token, uid, _findings(other[1][0].stem), transaction)
    assert stranger.status_code == 422 and other[1][0].stem in stranger.json()["detail"]
    not_json = hub.client.put(
        f"/workitems/{uid}/findings", content=b"{not json",
        headers=hub.auth(performer_token) | {"Transaction-UID": transaction},
    )  # fmt: skip
    assert not_json.status_code == 422 and "not JSON" in not_json.json()["detail"]
    none_yet = _put_state(hub, performer_token, uid, _state("COMPLETED", transaction))
    assert none_yet.status_code == 409 and "0xC304" in none_yet.headers["warning"]

    # findings handed in under a claim the janitor took back are not the next claim's
    assert _hand_in(hub, performer_token, uid, _findings(sop), transaction).status_code == 204
    engine = make_engine(hub.settings.effective_database_url)
    try:
        with make_sessions(engine)() as session:
            silent = utcnow() + timedelta(seconds=hub.settings.performer_lease_s + 1)
            assert len(reap(session, max_attempts=3, now=silent).requeued) == 1
    finally:
        engine.dispose()
    late = _hand_in(hub, performer_token, uid, _findings(sop), transaction)
    assert late.status_code == 409
    second = generate_uid()
    assert _put_state(hub, performer_token, uid, _state("IN PROGRESS", second)).status_code == 200
    stale = _put_state(hub, performer_token, uid, _state("COMPLETED", second))
    assert stale.status_code == 409 and "0xC304" in stale.headers["warning"]
    assert _hand_in(hub, performer_token, uid, _findings(sop, "clear"), second).status_code == 204
    done = _put_state(hub, performer_token, uid, _state("COMPLETED", second))
    assert done.status_code == 200, done.text
    (task,) = hub.client.get("/tasks", headers=hub.auth(token_a)).json()
    assert task["state"] == "COMPLETED" and task["findings"]["summary"] == "clear"
    ended = _hand_in(hub, performer_token, uid, _findings(sop), second)
    assert ended.status_code == 409 and "0xC300" in ended.headers["warning"]
