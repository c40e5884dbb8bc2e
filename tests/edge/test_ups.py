"""UPS-RS on the edge, driven as an IHE AIW-I Task Requester would (PS3.18 §11, RAD-80..109).

A real hub (uvicorn, SQLite), a real edge (its status server carries the
UPS-RS routes) and Orthanc as the hospital's PACS. The Task Requester
subscribes globally, creates a workitem for a study the edge holds (found by
its Accession Number), receives the UPS State Reports over the WebSocket
(websockets, the library) and retrieves the result references, which name
the SR stored in Orthanc inside the original study. A workitem for a study
the edge does not hold pulls it from Orthanc by C-MOVE (aifi.edge.pull).

    .venv/bin/pytest tests/edge/test_ups.py -v
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from status_support import PASSWORD, edge_settings, running_hub, send, study, wait_for
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from aifi.edge.config import QueryRetrievePeer
from aifi.edge.service import EdgeService
from aifi.edge.ups import GLOBAL_SUBSCRIPTION
from aifi.netutil import free_port
from peers.orthanc import orthanc_available, start_orthanc

AUTH = {"Authorization": f"Bearer {PASSWORD}"}
REQUESTER = "RIS_REQUESTER"


def workitem(
    algorithm: str, *, accession: str = "", study_uid: str = "", priority: str = "HIGH"
) -> dict[str, Any]:
    """A workitem as a RIS creates it: the algorithm as a code, the study in the request."""
    request: dict[str, Any] = {}
    if accession:
        request["00080050"] = {"vr": "SH", "Value": [accession]}
    if study_uid:
        request["0020000D"] = {"vr": "UI", "Value": [study_uid]}
    return {
        "00741200": {"vr": "CS", "Value": [priority]},
        "00741204": {"vr": "LO", "Value": ["AI on request"]},
        "00404018": {
            "vr": "SQ",
            "Value": [
                {
                    "00080100": {"vr": "SH", "Value": [algorithm]},
                    "00080102": {"vr": "SH", "Value": ["99AIFI"]},
                    "00080104": {"vr": "LO", "Value": [algorithm]},
                }
            ],
        },
        "0040A370": {"vr": "SQ", "Value": [request]},
    }


def reports(ws: ClientConnection, uid: str, until: str, timeout: float = 90.0) -> list[str]:
    """The states reported for ``uid`` until ``until`` arrives."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while until not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {until} report for {uid}; saw {seen}"
        message = json.loads(ws.recv(timeout=left))
        assert message["00001002"]["Value"] == [1]  # UPS State Report
        if message["00001000"]["Value"] == [uid]:
            seen.append(message["00741000"]["Value"][0])
    return seen


def first(ds: dict[str, Any], tag: str) -> Any:
    return ds[tag]["Value"][0]


@pytest.fixture
def orthanc_pacs(tmp_path: Path) -> Any:
    if not orthanc_available():
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    port = free_port()
    with start_orthanc(
        tmp_path / "orthanc", extra_config={"DicomPort": port}, stop_grace_s=0.5
    ) as orthanc:
        yield orthanc, port


@pytest.mark.orthanc
@pytest.mark.slow
def test_a_task_requester_creates_follows_and_retrieves_a_workitem(
    tmp_path: Path, orthanc_pacs: Any
) -> None:
    orthanc, pacs_port = orthanc_pacs
    with running_hub(tmp_path / "hub") as (hub_url, token):
        settings = edge_settings(tmp_path / "edge", hub_url, token, pacs_port)
        edge = EdgeService(settings.model_copy(update={"rules": []}))  # nothing routed by rules
        edge.start()
        try:
            datasets = study(2)
            assert all(r.ok for r in send(edge, datasets))
            wait_for(lambda: bool(edge.state.events("study-not-routed")), what="held study")
            base = edge.status_url
            assert base is not None
            ws_url = base.replace("http", "ws", 1) + f"ws/subscribers/{REQUESTER}"
            with httpx.Client(base_url=base, headers=AUTH, timeout=30) as ups:
                # Subscribe globally (§11.10), then open the event channel (§11.11)
                sub = ups.post(f"/workitems/{GLOBAL_SUBSCRIPTION}/subscribers/{REQUESTER}")
                assert sub.status_code == 201, sub.text
                assert sub.headers["content-location"] == ws_url
                with connect(ws_url, additional_headers=AUTH) as ws:
                    # Create (§11.4): bone age... here the connection test, by accession
                    accession = str(datasets[0].AccessionNumber)
                    created = ups.post(
                        "/workitems", json=workitem("integrity-check", accession=accession)
                    )
                    assert created.status_code == 201, created.text
                    uid = created.headers["location"].rsplit("/", 1)[1]
                    # and a subscription to this one workitem too
                    assert ups.post(f"/workitems/{uid}/subscribers/{REQUESTER}").status_code == 201

                    states = reports(ws, uid, "COMPLETED")
                    assert states == ["SCHEDULED", "IN PROGRESS", "COMPLETED"]

                # Retrieve (§11.5): the result references, as stored in PACS
                got = ups.get(f"/workitems/{uid}")
                assert got.status_code == 200
                (item,) = got.json()
                assert first(item, "00741000") == "COMPLETED"
                assert first(item, "00741200") == "HIGH"
                assert "00081195" not in item  # the Transaction UID is never returned
                outputs = first(item, "00741216")["00404033"]["Value"]
                (output,) = outputs
                assert first(output, "0020000D") == str(datasets[0].StudyInstanceUID)
                assert first(output, "00080054") == "ORTHANC"
                (ref,) = output["00081199"]["Value"]
                assert (
                    first(ref, "00081150") == "1.2.840.10008.5.1.4.1.1.88.34"
                )  # Comprehensive 3D SR
                sop = first(ref, "00081155")
                in_pacs = orthanc.find_instances(SOPInstanceUID=sop)
                assert len(in_pacs) == 1
                assert orthanc.dataset(in_pacs[0]).StudyInstanceUID == datasets[0].StudyInstanceUID

                # Search (§11.9)
                found = ups.get("/workitems", params={"ProcedureStepState": "COMPLETED"})
                assert [first(w, "00080018") for w in found.json()] == [uid]
                assert ups.get("/workitems", params={"AccessionNumber": "nope"}).status_code == 204
                bad = ups.get("/workitems", params={"PatientName": "DEMO*"})
                assert bad.status_code == 400
                assert "PatientName" in bad.json()["detail"]

                # Unsubscribe (§11.10)
                assert ups.delete(f"/workitems/{uid}/subscribers/{REQUESTER}").status_code == 200
                assert (
                    ups.delete(f"/workitems/{GLOBAL_SUBSCRIPTION}/subscribers/{REQUESTER}")
                ).status_code == 200
            (task,) = edge.state.tasks()
            assert task.priority == 0  # HIGH from the workitem, in the outbox's order
        finally:
            edge.stop()


def test_cancellation_change_state_and_refusals(tmp_path: Path) -> None:
    with running_hub(tmp_path / "hub") as (hub_url, token):
        settings = edge_settings(tmp_path / "edge", hub_url, token, free_port())
        edge = EdgeService(settings.model_copy(update={"rules": []}))
        edge.start()
        try:
            base = edge.status_url
            assert base is not None
            ws_url = base.replace("http", "ws", 1) + f"ws/subscribers/{REQUESTER}"
            with httpx.Client(base_url=base, headers=AUTH, timeout=30) as ups:
                # not held: accepted, waits for the study (Input Readiness INCOMPLETE)
                waiting = ups.post(
                    "/workitems", json=workitem("integrity-check", study_uid="1.2.826.0.1.99.1")
                )
                assert waiting.status_code == 201, waiting.text
                uid = waiting.headers["location"].rsplit("/", 1)[1]
                (item,) = ups.get(f"/workitems/{uid}").json()
                assert first(item, "00741000") == "SCHEDULED"
                assert first(item, "00404041") == "INCOMPLETE"

                assert ups.post(f"/workitems/{uid}/subscribers/{REQUESTER}").status_code == 201
                with connect(ws_url, additional_headers=AUTH) as ws:
                    assert reports(ws, uid, "SCHEDULED") == ["SCHEDULED"]
                    # Request Cancellation (§11.8)
                    cancel = ups.post(
                        f"/workitems/{uid}/cancelrequest",
                        json={"00741238": {"vr": "LT", "Value": ["ordered by mistake"]}},
                    )
                    assert cancel.status_code == 202, cancel.text
                    assert reports(ws, uid, "CANCELED") == ["CANCELED"]
                (item,) = ups.get(f"/workitems/{uid}").json()
                assert first(item, "00741000") == "CANCELED"
                assert "ordered by mistake" in first(first(item, "00741002"), "00741238")
                assert ups.post(f"/workitems/{uid}/cancelrequest").status_code == 409

                # Change State (§11.7): a performer claims with its Transaction UID
                other = ups.post(
                    "/workitems", json=workitem("integrity-check", study_uid="1.2.826.0.1.99.2")
                )
                uid2 = other.headers["location"].rsplit("/", 1)[1]
                txn = "1.2.826.0.1.99.777"

                def put(state: str, transaction: str | None) -> httpx.Response:
                    body = {"00741000": {"vr": "CS", "Value": [state]}}
                    if transaction:
                        body["00081195"] = {"vr": "UI", "Value": [transaction]}
                    return ups.put(f"/workitems/{uid2}/state", json=body)

                assert put("IN PROGRESS", None).status_code == 400
                assert put("IN PROGRESS", txn).status_code == 200
                assert put("IN PROGRESS", "1.2.3").status_code == 409
                assert put("CANCELED", "1.2.3").status_code == 400
                assert put("CANCELED", txn).status_code == 200
                (item,) = ups.get(f"/workitems/{uid2}").json()
                assert first(item, "00741000") == "CANCELED"

                # Update (§11.6) while SCHEDULED
                third = ups.post(
                    "/workitems",
                    json=workitem("integrity-check", study_uid="1.2.826.0.1.99.3", priority="LOW"),
                )
                uid3 = third.headers["location"].rsplit("/", 1)[1]
                upd = ups.post(
                    f"/workitems/{uid3}", json={"00741200": {"vr": "CS", "Value": ["HIGH"]}}
                )
                assert upd.status_code == 200, upd.text
                assert first(ups.get(f"/workitems/{uid3}").json()[0], "00741200") == "HIGH"

                # refusals name the reason
                odd = workitem("integrity-check", study_uid="1.2.826.0.1.99.4")
                odd["00189999"] = {"vr": "LO", "Value": ["?"]}
                refused = ups.post("/workitems", json=odd)
                assert refused.status_code == 400
                assert "(0018,9999)" in refused.json()["detail"]
                assert "(0018,9999)" in refused.headers["warning"]
                wrong_scheme = workitem("integrity-check", study_uid="1.2.826.0.1.99.4")
                wrong_scheme["00404018"]["Value"][0]["00080102"]["Value"] = ["DCM"]
                assert ups.post("/workitems", json=wrong_scheme).status_code == 400
                urgentish = workitem(
                    "integrity-check", study_uid="1.2.826.0.1.99.4", priority="STAT"
                )
                assert ups.post("/workitems", json=urgentish).status_code == 400
                nowhere = ups.post("/workitems", json=workitem("integrity-check", accession="X9"))
                assert nowhere.status_code == 404
                assert ups.get("/workitems/1.2.3.4").status_code == 404
            assert httpx.get(base + "workitems").status_code == 401  # no token, no workitems
            with pytest.raises((ConnectionClosed, InvalidStatus)), connect(ws_url) as ws:
                ws.recv(timeout=5)
        finally:
            edge.stop()


@pytest.mark.orthanc
@pytest.mark.slow
def test_a_workitem_for_a_study_the_edge_lacks_pulls_it_by_c_move(
    tmp_path: Path, orthanc_pacs: Any
) -> None:
    orthanc, pacs_port = orthanc_pacs
    datasets = study(2)
    for n, ds in enumerate(datasets):
        path = tmp_path / f"in-pacs-{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        orthanc.upload(path)
    with running_hub(tmp_path / "hub") as (hub_url, token):
        settings = edge_settings(tmp_path / "edge", hub_url, token, pacs_port)
        peer = QueryRetrievePeer(
            name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=pacs_port, method="move"
        )
        listener = settings.listener.model_copy(update={"allowed_calling_aets": ["ORTHANC"]})
        edge = EdgeService(
            settings.model_copy(
                update={"rules": [], "query_retrieve": [peer], "listener": listener}
            )
        )
        edge.start()
        orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", edge.dicom_port)
        try:
            base = edge.status_url
            assert base is not None
            ws_url = base.replace("http", "ws", 1) + f"ws/subscribers/{REQUESTER}"
            with httpx.Client(base_url=base, headers=AUTH, timeout=60) as ups:
                accession = str(datasets[0].AccessionNumber)
                created = ups.post(
                    "/workitems", json=workitem("integrity-check", accession=accession)
                )
                assert created.status_code == 201, created.text
                uid = created.headers["location"].rsplit("/", 1)[1]
                assert ups.post(f"/workitems/{uid}/subscribers/{REQUESTER}").status_code == 201
                with connect(ws_url, additional_headers=AUTH) as ws:
                    assert reports(ws, uid, "COMPLETED") == [
                        "SCHEDULED",
                        "IN PROGRESS",
                        "COMPLETED",
                    ]
                (item,) = ups.get(f"/workitems/{uid}").json()
                (output,) = first(item, "00741216")["00404033"]["Value"]
                (ref,) = output["00081199"]["Value"]
                assert orthanc.find_instances(SOPInstanceUID=first(ref, "00081155"))
            assert edge.state.events("pull-requested")
            missing = workitem("integrity-check", accession="NOT-IN-PACS")
            with httpx.Client(base_url=base, headers=AUTH, timeout=60) as ups:
                answer = ups.post("/workitems", json=missing)
            assert answer.status_code == 404
            assert "NOT-IN-PACS" in answer.json()["detail"]
        finally:
            edge.stop()
