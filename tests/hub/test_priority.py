"""Priority (0074,1200) on the hub's queue, and a task API that refuses what it does not know.

One worker: an urgent CT submitted after 20 routine radiographs is run
before them (the one already running aside). Unknown fields in ``POST
/tasks`` answer 422 and unknown filters of ``GET /tasks`` 400, rather than
being dropped.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifi.algorithms.base import Algorithm, AlgorithmInput, Findings, Manifest
from aifi.hub.config import HubSettings

from .conftest import Hub
from .consoletools import login


class Recorder:
    """Runs as soon as the test lets it (``gate``); records which study it ran, in order."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.order: list[str] = []
        self.manifest = Manifest(
            id="recorder",
            version="0.1",
            name="records the order it runs in",
            vendor="tests",
            intended_use="tests",
            regulatory_status="none",
            accepts=(),
            produces=(),
        )

    def run(self, inputs: AlgorithmInput) -> Findings:
        self.gate.wait(30)
        self.order.append(inputs.study_instance_uid)
        return Findings(summary="ran")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def test_algorithms(recorder: Recorder) -> dict[str, Algorithm]:
    return {"recorder": recorder}


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> HubSettings:
    return HubSettings(
        data_dir=tmp_path / "hub-data",
        workers=1,
        worker_isolation="thread",
        worker_poll_s=0.05,
        database_url=database_url,
    )


def create(hub: Hub, token: str, study: str, sops: Sequence[str], priority: str) -> str:
    answer = hub.client.post(
        "/tasks",
        json={
            "client_task_id": uuid.uuid4().hex,
            "algorithm_id": "recorder",
            "study_instance_uid": study,
            "sop_instance_uids": list(sops),
            "priority": priority,
        },
        headers=hub.auth(token),
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["priority"] == priority
    return str(answer.json()["id"])


def test_an_urgent_ct_after_20_routine_radiographs_runs_first(
    hub: Hub,
    token_a: str,
    operator_token: str,
    recorder: Recorder,
    study: tuple[str, list[Path]],
) -> None:
    ct_uid, files = study
    assert hub.stow(token_a, files).status_code == 200
    sops = [f.stem for f in files]
    # 20 routine ones (the same images stand for the day's radiographs), then the urgent CT
    routine = [create(hub, token_a, ct_uid, sops, "MEDIUM") for _ in range(20)]
    deadline = time.monotonic() + 10
    while not any(
        hub.client.get(f"/tasks/{t}", headers=hub.auth(token_a)).json()["state"] == "IN PROGRESS"
        for t in routine[:1]
    ):
        assert time.monotonic() < deadline, "the worker took no task"
        time.sleep(0.05)
    urgent = create(hub, token_a, ct_uid, sops, "HIGH")
    waiting = {
        dict(sample.labels)["priority"]: sample.value
        for family in text_string_to_metric_families(hub.client.get("/metrics").text)
        for sample in family.samples
        if sample.name == "aifi_hub_queue_depth_by_priority"
    }
    with httpx.Client(base_url=hub.client.base_url, timeout=30, follow_redirects=True) as browser:
        login(browser, operator_token)
        queue = browser.get("/console/queue").text
    recorder.gate.set()

    assert waiting == {"HIGH": 1, "MEDIUM": 19, "LOW": 0}  # the order, as /metrics shows it
    # ... and as the operator's console shows it: the running radiograph, then the CT first
    running, waiting_table = queue.split('<table id="waiting">')
    assert routine[0] in running.split('<table id="running">')[1]
    listed = re.findall(r'<tr data-task="([0-9a-f]+)">', waiting_table)
    assert listed == [urgent, *routine[1:]]
    assert re.search(rf'data-task="{urgent}">\s*<td>1</td>\s*<td><span[^>]*>HIGH<', waiting_table)

    for task_id in [*routine, urgent]:
        assert hub.wait_for_end(token_a, task_id, timeout=60)["state"] == "COMPLETED"
    ended = sorted(
        [*routine, urgent],
        key=lambda t: hub.client.get(f"/tasks/{t}", headers=hub.auth(token_a)).json()["updated_at"],
    )
    # the first radiograph was already running when the CT came; the CT came next
    assert ended.index(urgent) == 1, ended.index(urgent)


def test_unknown_fields_and_filters_are_refused(
    hub: Hub, token_a: str, study: tuple[str, list[Path]]
) -> None:
    study_uid, files = study
    assert hub.stow(token_a, files).status_code == 200
    body = {
        "client_task_id": "edge-1",
        "algorithm_id": "recorder",
        "study_instance_uid": study_uid,
        "sop_instance_uids": [f.stem for f in files],
    }
    misspelt = hub.client.post(
        "/tasks", json={**body, "priorty": "HIGH"}, headers=hub.auth(token_a)
    )
    assert misspelt.status_code == 422
    assert "priorty" in misspelt.text
    stat = hub.client.post("/tasks", json={**body, "priority": "STAT"}, headers=hub.auth(token_a))
    assert stat.status_code == 422

    unfiltered = hub.client.get(
        "/tasks", params={"study_instance_uid": study_uid}, headers=hub.auth(token_a)
    )
    assert unfiltered.status_code == 400
    assert "study_instance_uid" in unfiltered.json()["detail"]
    assert (
        hub.client.get(
            "/tasks", params={"state": "COMPLETED"}, headers=hub.auth(token_a)
        ).status_code
        == 200
    )
