"""The hub's tasks as UPS-RS workitems (PS3.18 §11): create, retrieve, search, cancel.

Same tasks as ``/tasks``: a workitem created here is listed there, and the
other way round; priority is Scheduled Procedure Step Priority (0074,1200).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from aifi.algorithms.base import Algorithm, AlgorithmInput, Findings, Manifest
from aifi.hub.config import HubSettings

from .conftest import Hub


class Gated:
    """Holds the only worker until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.manifest = Manifest(
            id="gated", version="0.1", name="waits", vendor="tests", intended_use="tests",
            regulatory_status="none", accepts=(), produces=(),
        )  # fmt: skip

    def run(self, inputs: AlgorithmInput) -> Findings:
        self.gate.wait(30)
        return Findings(summary="ran")


@pytest.fixture
def gated() -> Gated:
    return Gated()


@pytest.fixture
def test_algorithms(gated: Gated) -> dict[str, Algorithm]:
    return {"gated": gated}


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> HubSettings:
    return HubSettings(
        data_dir=tmp_path / "hub-data", workers=1, worker_isolation="thread",
        worker_poll_s=0.05, database_url=database_url,
    )  # fmt: skip


def workitem(study: str, sops: list[str], *, algorithm: str = "integrity-check",
             priority: str = "HIGH") -> dict[str, Any]:  # fmt: skip
    return {
        "00741200": {"vr": "CS", "Value": [priority]},
        "00404018": {
            "vr": "SQ",
            "Value": [
                {
                    "00080100": {"vr": "SH", "Value": [algorithm]},
                    "00080102": {"vr": "SH", "Value": ["99AIFI"]},
                }
            ],
        },
        "00404021": {
            "vr": "SQ",
            "Value": [
                {
                    "0020000D": {"vr": "UI", "Value": [study]},
                    "00081199": {
                        "vr": "SQ",
                        "Value": [{"00081155": {"vr": "UI", "Value": [s]}} for s in sops],
                    },
                }
            ],
        },
    }


def first(ds: dict[str, Any], tag: str) -> Any:
    return ds[tag]["Value"][0]


def test_a_workitem_runs_as_a_task_and_names_its_results(
    hub: Hub, token_a: str, study: tuple[str, list[Path]]
) -> None:
    study_uid, files = study
    assert hub.stow(token_a, files).status_code == 200
    auth = hub.auth(token_a)
    created = hub.client.post(
        "/workitems", json=workitem(study_uid, [f.stem for f in files]), headers=auth
    )
    assert created.status_code == 201, created.text
    uid = created.headers["location"].rsplit("/", 1)[1]

    (task,) = hub.client.get("/tasks", headers=auth).json()  # the same task, both shapes
    assert task["client_task_id"] == uid and task["priority"] == "HIGH"
    ended = hub.wait_for_end(token_a, task["id"])
    (item,) = hub.client.get(f"/workitems/{uid}", headers=auth).json()
    assert first(item, "00741000") == "COMPLETED"
    assert first(item, "00741200") == "HIGH"
    (output,) = first(item, "00741216")["00404033"]["Value"]
    (ref,) = output["00081199"]["Value"]
    assert first(ref, "00081155") == ended["results"][0]["sop_instance_uid"]
    assert first(output, "0020000D") == study_uid

    found = hub.client.get("/workitems", params={"ProcedureStepState": "COMPLETED"}, headers=auth)
    assert [first(w, "00080018") for w in found.json()] == [uid]
    none = hub.client.get(
        "/workitems", params={"ScheduledProcedureStepPriority": "LOW"}, headers=auth
    )
    assert none.status_code == 204
    bad = hub.client.get("/workitems", params={"StudyInstanceUID": study_uid}, headers=auth)
    assert bad.status_code == 400 and "StudyInstanceUID" in bad.json()["detail"]
    done = hub.client.post(f"/workitems/{uid}/cancelrequest", headers=auth)
    assert done.status_code == 409  # already COMPLETED


def test_refusals_and_cancellation(hub: Hub, token_a: str, token_b: str) -> None:
    auth = hub.auth(token_a)
    odd = workitem("1.2.3", ["1.2.3.4"])
    odd["00100010"] = {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]}
    refused = hub.client.post("/workitems", json=odd, headers=auth)
    assert refused.status_code == 400 and "(0010,0010)" in refused.json()["detail"]
    stat = hub.client.post(
        "/workitems", json=workitem("1.2.3", ["1.2.3.4"], priority="STAT"), headers=auth
    )
    assert stat.status_code == 400
    not_uploaded = hub.client.post("/workitems", json=workitem("1.2.3", ["1.2.3.4"]), headers=auth)
    assert not_uploaded.status_code == 422  # the same refusal as POST /tasks
    assert hub.client.get("/workitems/1.2.3", headers=hub.auth(token_b)).status_code == 404


def test_a_scheduled_workitem_is_canceled_on_request(
    hub: Hub, token_a: str, gated: Gated, study: tuple[str, list[Path]]
) -> None:
    study_uid, files = study
    assert hub.stow(token_a, files).status_code == 200
    auth = hub.auth(token_a)
    sops = [f.stem for f in files]
    running = hub.client.post(
        "/workitems", json=workitem(study_uid, sops, algorithm="gated"), headers=auth
    )
    waiting = hub.client.post(
        "/workitems",
        json=workitem(study_uid, sops, algorithm="gated", priority="LOW"),
        headers=auth,
    )
    uid = waiting.headers["location"].rsplit("/", 1)[1]
    assert (
        first(hub.client.get(f"/workitems/{uid}", headers=auth).json()[0], "00741000")
        == "SCHEDULED"
    )

    reason = {"00741238": {"vr": "LT", "Value": ["ordered twice"]}}
    answer = hub.client.post(f"/workitems/{uid}/cancelrequest", json=reason, headers=auth)
    gated.gate.set()

    assert answer.status_code == 202, answer.text
    (item,) = hub.client.get(f"/workitems/{uid}", headers=auth).json()
    assert first(item, "00741000") == "CANCELED"
    assert "ordered twice" in first(first(item, "00741002"), "00741238")
    first_uid = running.headers["location"].rsplit("/", 1)[1]
    (task,) = [
        t for t in hub.client.get("/tasks", headers=auth).json() if t["client_task_id"] == first_uid
    ]
    assert hub.wait_for_end(token_a, task["id"])["state"] == "COMPLETED"
