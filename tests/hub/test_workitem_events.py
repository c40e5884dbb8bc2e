"""UPS-RS subscriptions and event reports at the hub (PS3.18 §11.8, §11.10-11.11, RAD-109).

A vendor's runner (an outside performer) subscribes globally and listens on
its WebSocket: a hospital creates a workitem of an outside algorithm, the
performer hears SCHEDULED, claims it; the hospital requests cancellation,
the performer hears UPS Cancel Requested (Event Type ID 2, PS3.4 Table
CC.2.4-1) with the reason and contact, cancels with its Transaction UID,
and the hospital's edge (HubClient) sees CANCELED with the reason. The
events come from the database: a second hub process on the same database
serves the WebSocket. SQLite and PostgreSQL, against running hubs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from aifi.algorithms.base import Algorithm
from aifi.algorithms.integrity_check import ALGORITHM as INTEGRITY_CHECK
from aifi.algorithms.integrity_check import MANIFEST as INTEGRITY_MANIFEST
from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions
from aifi.hub.leases import reap
from aifi.hub.models import utcnow
from aifi.protocol.client import HubClient, HubPeer
from aifi.protocol.schemas import Role, TaskState

from .conftest import Hub, add_operator, serving
from .test_workitems import first, workitem

OUTSIDE = "outside-check"
GLOBAL = "1.2.840.10008.5.1.4.34.5"


class Outside:
    """The integrity check under another id: performed outside the hub, never by its workers."""

    manifest = dataclasses.replace(INTEGRITY_MANIFEST, id=OUTSIDE, name="Outside (test)")

    def run(self, inputs: Any) -> Any:
        return INTEGRITY_CHECK.run(inputs)


@pytest.fixture
def test_algorithms() -> dict[str, Algorithm]:
    return {OUTSIDE: Outside()}


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> HubSettings:
    return HubSettings(
        data_dir=tmp_path / "hub-data", workers=1, worker_isolation="thread",
        worker_poll_s=0.05, database_url=database_url, outside_algorithms=[OUTSIDE],
    )  # fmt: skip


@pytest.fixture
def performer_token(settings: HubSettings) -> str:
    return add_operator(settings, "Vendor runner", Role.PERFORMER)


@pytest.fixture
def replica(hub: Hub, resolver: Any, manifests: Any) -> Iterator[Hub]:
    """A second hub API process on the same database and data folder (``aifi hub api`` x2)."""
    app = create_app(hub.settings, algorithms=resolver, manifests=manifests)
    with serving(app, hub.settings) as client:
        yield Hub(client, hub.settings)


def _created(hub: Hub, token: str, study: tuple[str, list[Path]]) -> str:
    study_uid, files = study
    created = hub.client.post(
        "/workitems",
        json=workitem(study_uid, [f.stem for f in files], algorithm=OUTSIDE),
        headers=hub.auth(token),
    )
    assert created.status_code == 201, created.text
    return str(created.headers["location"].rsplit("/", 1)[1])


def _state(value: str, transaction: str, reason: str = "") -> dict[str, Any]:
    ds: dict[str, Any] = {
        "00741000": {"vr": "CS", "Value": [value]},
        "00081195": {"vr": "UI", "Value": [transaction]},
    }
    if reason:
        ds["00741238"] = {"vr": "LT", "Value": [reason]}
    return ds


def _subscribe(hub: Hub, token: str, uid: str, aet: str) -> str:
    answer = hub.client.post(f"/workitems/{uid}/subscribers/{aet}", headers=hub.auth(token))
    assert answer.status_code == 201, answer.text
    return str(answer.headers["content-location"])


def _listen(hub: Hub, token: str, aet: str) -> ClientConnection:
    url = str(hub.client.base_url).replace("http", "ws", 1).rstrip("/") + f"/ws/subscribers/{aet}"
    return connect(url, additional_headers=hub.auth(token), open_timeout=10)


def _next(ws: ClientConnection, uid: str, event_type: int, timeout: float = 15) -> dict[str, Any]:
    """The next report on ``uid`` of ``event_type``; others on the way are skipped."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            report: dict[str, Any] = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            break
        if first(report, "00001000") == uid and first(report, "00001002") == event_type:
            return report
    raise AssertionError(f"no event of type {event_type} on workitem {uid} within {timeout} s")


def _quiet(ws: ClientConnection, seconds: float = 0.8) -> list[dict[str, Any]]:
    """Every report that arrives within ``seconds``."""
    got, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(json.loads(ws.recv(timeout=left)))
        except TimeoutError:
            break
    return got


def _retrieve(hub: Hub, token: str, uid: str) -> dict[str, Any]:
    response = hub.client.get(f"/workitems/{uid}", headers=hub.auth(token))
    assert response.status_code == 200, response.text
    (item,) = response.json()
    return dict(item)


def test_a_cancel_request_reaches_the_performer_which_cancels_and_the_edge_sees_it(
    hub: Hub,
    replica: Hub,
    token_a: str,
    performer_token: str,
    operator_token: str,
    study: tuple[str, list[Path]],
) -> None:
    assert hub.stow(token_a, study[1]).status_code == 200
    where = _subscribe(hub, performer_token, GLOBAL, "VENDOR")
    assert where == f"{str(hub.client.base_url).replace('http', 'ws', 1)}/ws/subscribers/VENDOR"
    # the performer listens on the other hub process: events come from the database
    with _listen(replica, performer_token, "VENDOR") as performer:
        uid = _created(hub, token_a, study)
        scheduled = _next(performer, uid, 1)
        assert first(scheduled, "00741000") == "SCHEDULED"
        assert first(scheduled, "00000002") == "1.2.840.10008.5.1.4.34.6.1"

        transaction = generate_uid()
        claimed = hub.client.put(
            f"/workitems/{uid}/state",
            json=_state("IN PROGRESS", transaction),
            headers=hub.auth(performer_token),
        )
        assert claimed.status_code == 200, claimed.text
        assert first(_next(performer, uid, 1), "00741000") == "IN PROGRESS"

        _subscribe(hub, token_a, uid, "RIS")  # the hospital follows its own workitem
        with _listen(hub, token_a, "RIS") as hospital:
            assert first(_next(hospital, uid, 1), "00741000") == "IN PROGRESS"  # initial report
            asked = hub.client.post(
                f"/workitems/{uid}/cancelrequest",
                json={
                    "00741238": {"vr": "LT", "Value": ["patient transferred"]},
                    "0074100C": {"vr": "LO", "Value": ["Radiology desk"]},
                    "0074100A": {"vr": "UR", "Value": ["tel:+3120555"]},
                },
                headers=hub.auth(token_a),
            )
            assert asked.status_code == 202, asked.text
            assert "warning" not in asked.headers
            item = _retrieve(hub, token_a, uid)
            assert first(item, "00741000") == "IN PROGRESS"  # the performer decides
            progress = first(item, "00741002")
            assert first(progress, "00741238") == "patient transferred"
            assert first(progress, "0074100C") == "Radiology desk"
            assert first(progress, "00404052")  # when it was asked

            request = _next(performer, uid, 2)  # UPS Cancel Requested
            assert first(request, "00741238") == "patient transferred"
            assert first(request, "0074100C") == "Radiology desk"
            assert first(request, "0074100A") == "tel:+3120555"
            assert transaction not in json.dumps(request)

            canceled = hub.client.put(
                f"/workitems/{uid}/state",
                json=_state("CANCELED", transaction),
                headers=hub.auth(performer_token),
            )
            assert canceled.status_code == 200, canceled.text
            for listener in (performer, hospital):
                report = _next(listener, uid, 1)
                assert first(report, "00741000") == "CANCELED"
                assert "patient transferred" in first(report, "00741238")

    (task,) = hub.client.get("/tasks", headers=hub.auth(token_a)).json()
    edge = HubClient(HubPeer(url=str(hub.client.base_url), token=token_a))
    try:
        seen = edge.task(task["id"])
    finally:
        edge.close()
    assert seen.state == TaskState.CANCELED
    assert seen.reason is not None and "patient transferred" in seen.reason
    assert "outside performer" in seen.reason and not seen.results

    again = hub.client.post(f"/workitems/{uid}/cancelrequest", headers=hub.auth(token_a))
    assert again.status_code == 202 and "0xB304" in again.headers["warning"]
    audit = hub.client.get(
        "/audit", params={"action": "task.cancel_requested"}, headers=hub.auth(operator_token)
    )
    assert audit.status_code == 200, audit.text
    (event,) = audit.json()
    assert event["detail"]["reason"].endswith("patient transferred")
    assert event["actor"].startswith("hospital:")


def test_subscriptions_are_scoped_checked_suspended_and_ended(
    hub: Hub,
    token_a: str,
    token_b: str,
    performer_token: str,
    study: tuple[str, list[Path]],
) -> None:
    assert hub.stow(token_a, study[1]).status_code == 200
    uid = _created(hub, token_a, study)

    def post(token: str, path: str) -> httpx.Response:
        return hub.client.post(path, headers=hub.auth(token))

    assert post(token_b, f"/workitems/{uid}/subscribers/RIS").status_code == 404  # not B's
    filtered = post(token_a, f"/workitems/{GLOBAL}.1/subscribers/RIS")
    assert filtered.status_code == 400 and "filtered" in filtered.headers["warning"]
    too_long = post(token_a, f"/workitems/{uid}/subscribers/{'A' * 17}")
    assert too_long.status_code == 400
    locked = post(token_a, f"/workitems/{uid}/subscribers/RIS?deletionlock=true")
    assert locked.status_code == 400
    one = post(token_a, f"/workitems/{uid}/subscribers/RIS/suspend")
    assert one.status_code == 400 and "global" in one.json()["detail"]
    with pytest.raises((ConnectionClosed, InvalidStatus)), _listen(hub, "not-a-token", "X") as ws:
        ws.recv(timeout=5)

    # hospital B's global subscription never hears of A's workitems
    _subscribe(hub, token_b, GLOBAL, "RIS")
    _subscribe(hub, performer_token, GLOBAL, "VENDOR")
    with (
        _listen(hub, token_b, "RIS") as other,
        _listen(hub, performer_token, "VENDOR") as performer,
    ):
        assert first(_next(performer, uid, 1), "00741000") == "SCHEDULED"  # open on connecting
        suspended = post(performer_token, f"/workitems/{GLOBAL}/subscribers/VENDOR/suspend")
        assert suspended.status_code == 200
        later = _created(hub, token_a, (study[0], study[1]))
        transaction = generate_uid()
        assert (
            hub.client.put(
                f"/workitems/{uid}/state",
                json=_state("IN PROGRESS", transaction),
                headers=hub.auth(performer_token),
            ).status_code
            == 200
        )
        assert first(_next(performer, uid, 1), "00741000") == "IN PROGRESS"  # still covered
        heard = _quiet(performer) + _quiet(other)
        assert later not in {first(r, "00001000") for r in heard}  # suspended: no new ones
        assert uid not in {first(r, "00001000") for r in _quiet(other)}

        ended = hub.client.delete(
            f"/workitems/{GLOBAL}/subscribers/VENDOR", headers=hub.auth(performer_token)
        )
        assert ended.status_code == 200
        _quiet(performer, 0.5)  # a poll that began before the unsubscribe has ended
        hub.client.put(
            f"/workitems/{uid}/state",
            json=_state("CANCELED", transaction, "no longer wanted"),
            headers=hub.auth(performer_token),
        )
        assert _quiet(performer) == []  # unsubscribed: nothing more
    assert first(_retrieve(hub, token_a, uid), "00741000") == "CANCELED"
    done = hub.client.post(f"/workitems/{uid}/cancelrequest", headers=hub.auth(token_a))
    assert done.status_code == 202 and "0xB304" in done.headers["warning"]


def test_a_cancel_request_outlives_a_performer_that_went_silent(
    hub: Hub, token_a: str, performer_token: str, study: tuple[str, list[Path]]
) -> None:
    assert hub.stow(token_a, study[1]).status_code == 200
    uid = _created(hub, token_a, study)
    first_claim = generate_uid()
    put = hub.client.put(
        f"/workitems/{uid}/state",
        json=_state("IN PROGRESS", first_claim),
        headers=hub.auth(performer_token),
    )
    assert put.status_code == 200, put.text
    reason = {"00741238": {"vr": "LT", "Value": ["ordered twice"]}}
    asked = hub.client.post(
        f"/workitems/{uid}/cancelrequest", json=reason, headers=hub.auth(token_a)
    )
    assert asked.status_code == 202
    engine = make_engine(hub.settings.effective_database_url)
    try:
        with make_sessions(engine)() as session:
            silent = utcnow() + timedelta(seconds=hub.settings.performer_lease_s + 1)
            assert len(reap(session, max_attempts=3, now=silent).requeued) == 1
    finally:
        engine.dispose()
    again = hub.client.put(
        f"/workitems/{uid}/state",
        json=_state("IN PROGRESS", generate_uid()),
        headers=hub.auth(performer_token),
    )
    assert again.status_code == 409 and "0xC300" in again.headers["warning"]
    item = _retrieve(hub, token_a, uid)
    assert first(item, "00741000") == "CANCELED"
    assert "ordered twice" in first(first(item, "00741002"), "00741238")
