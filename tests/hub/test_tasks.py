"""The task API: create, run, read, list, acknowledge (UPS states, PS3.4 Annex CC)."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from aifi.algorithms.base import Algorithm, AlgorithmInput, Findings, Manifest
from aifi.algorithms.integrity_check import pixel_digest
from aifi.errors import InputNotAccepted
from aifi.protocol.schemas import TaskOut, TaskState

from .conftest import Hub, new_uid, split_multipart


class Refuses:
    manifest = Manifest(
        id="refuses",
        version="0.1",
        name="refuses everything",
        vendor="tests",
        intended_use="tests",
        regulatory_status="none",
        accepts=(),
    )

    def run(self, inputs: AlgorithmInput) -> Findings:
        raise InputNotAccepted(f"study {inputs.study_instance_uid} is not a hand radiograph")


class Instant:
    manifest = Manifest(
        id="instant",
        version="0.1",
        name="answers at once, urgent, produces no DICOM",
        vendor="tests",
        intended_use="tests",
        regulatory_status="none",
        accepts=(),
        produces=(),
    )

    def run(self, inputs: AlgorithmInput) -> Findings:
        return Findings(
            summary=f"{len(inputs.instances)} images seen",
            urgent=True,
            details={"seen": [i.sop_instance_uid for i in inputs.instances]},
        )


class Crashes:
    manifest = Manifest(
        id="crashes",
        version="0.1",
        name="has a bug",
        vendor="tests",
        intended_use="tests",
        regulatory_status="none",
        accepts=(),
    )

    def run(self, inputs: AlgorithmInput) -> Findings:
        raise ZeroDivisionError("a bug in a plug-in")


@pytest.fixture
def test_algorithms() -> dict[str, Algorithm]:
    return {"refuses": Refuses(), "crashes": Crashes(), "instant": Instant()}


@pytest.fixture
def uploaded(hub: Hub, token_a: str, study: tuple[str, list[Path]]) -> tuple[str, list[str]]:
    study_uid, files = study
    assert hub.stow(token_a, files).status_code == 200
    return study_uid, [f.stem for f in files]


def test_task_runs_and_its_sr_is_retrievable(
    hub: Hub, token_a: str, uploaded: tuple[str, list[str]], study: tuple[str, list[Path]]
) -> None:
    study_uid, sops = uploaded
    created = hub.create_task(token_a, study_uid, sops)
    assert created.status_code == 201
    assert created.json()["state"] in (TaskState.SCHEDULED, TaskState.IN_PROGRESS)

    task = TaskOut.model_validate(hub.wait_for_end(token_a, created.json()["id"]))

    assert task.state == TaskState.COMPLETED, task.reason
    assert task.algorithm_id == "integrity-check"
    assert task.algorithm_version == "1.0.0"
    assert task.findings is not None
    digests = task.findings["details"]["digests"]
    assert digests == {f.stem: pixel_digest(pydicom.dcmread(f)) for f in study[1]}
    (ref,) = task.results
    assert ref.kind == "sr"
    assert ref.study_instance_uid == study_uid
    wado = hub.client.get(
        f"/dicomweb/studies/{ref.study_instance_uid}/series/{ref.series_instance_uid}"
        f"/instances/{ref.sop_instance_uid}",
        headers=hub.auth(token_a),
    )
    assert wado.status_code == 200
    (part,) = split_multipart(wado.content, wado.headers["content-type"])
    sr = pydicom.dcmread(pydicom.filebase.DicomBytesIO(part))
    assert sr.SOPInstanceUID == ref.sop_instance_uid
    assert sr.SOPClassUID == ref.sop_class_uid
    assert sr.StudyInstanceUID == study_uid


def test_same_client_task_id_returns_the_existing_task(
    hub: Hub, token_a: str, uploaded: tuple[str, list[str]]
) -> None:
    study_uid, sops = uploaded
    first = hub.create_task(token_a, study_uid, sops, client_task_id="edge-42")
    again = hub.create_task(token_a, study_uid, sops, client_task_id="edge-42")

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    listed = hub.client.get("/tasks", headers=hub.auth(token_a)).json()
    assert [t["id"] for t in listed] == [first.json()["id"]]


def test_unknown_algorithm_is_refused_with_422(
    hub: Hub, token_a: str, uploaded: tuple[str, list[str]]
) -> None:
    study_uid, sops = uploaded
    response = hub.create_task(token_a, study_uid, sops, algorithm="no-such-algorithm")
    assert response.status_code == 422
    assert "no-such-algorithm" in response.json()["detail"]


def test_instances_not_uploaded_for_the_study_are_refused_with_422(
    hub: Hub, token_a: str, uploaded: tuple[str, list[str]]
) -> None:
    study_uid, sops = uploaded
    missing = new_uid()

    unknown_sop = hub.create_task(token_a, study_uid, [*sops, missing])
    other_study = hub.create_task(token_a, new_uid(), sops)

    assert unknown_sop.status_code == 422
    assert missing in unknown_sop.json()["detail"]
    assert "STOW-RS" in unknown_sop.json()["detail"]
    assert other_study.status_code == 422


def test_input_not_accepted_cancels_with_the_reason(
    hub: Hub, token_a: str, uploaded: tuple[str, list[str]]
) -> None:
    study_uid, sops = uploaded
    created = hub.create_task(token_a, study_uid, sops, algorithm="refuses")

    task = hub.wait_for_end(token_a, created.json()["id"])

    assert task["state"] == TaskState.CANCELED
    assert task["reason"] == f"study {study_uid} is not a hand radiograph"
    assert task["results"] == []


def test_a_crashing_algorithm_cancels_as_internal_error(
    hub: Hub, token_a: str, uploaded: tuple[str, list[str]]
) -> None:
    study_uid, sops = uploaded
    created = hub.create_task(token_a, study_uid, sops, algorithm="crashes")

    task = hub.wait_for_end(token_a, created.json()["id"])

    assert task["state"] == TaskState.CANCELED
    assert task["reason"] == "internal error: ZeroDivisionError"


def test_acknowledged_tasks_leave_the_poll(
    hub: Hub, token_a: str, uploaded: tuple[str, list[str]]
) -> None:
    study_uid, sops = uploaded
    task_id = hub.create_task(token_a, study_uid, sops).json()["id"]
    task = hub.wait_for_end(token_a, task_id)
    poll = {"state": "COMPLETED", "acknowledged": "false"}
    assert [
        t["id"] for t in hub.client.get("/tasks", params=poll, headers=hub.auth(token_a)).json()
    ] == [task_id]

    delivered = [r["sop_instance_uid"] for r in task["results"]]
    ack = hub.client.post(
        f"/tasks/{task_id}/acknowledge",
        json={"delivered_sop_instance_uids": delivered},
        headers=hub.auth(token_a),
    )

    assert ack.status_code == 200
    assert ack.json()["acknowledged"] is True
    assert hub.client.get("/tasks", params=poll, headers=hub.auth(token_a)).json() == []
    again = hub.client.post(
        f"/tasks/{task_id}/acknowledge",
        json={"delivered_sop_instance_uids": delivered},
        headers=hub.auth(token_a),
    )
    assert again.status_code == 200


def test_acknowledging_a_result_the_task_did_not_produce_is_422(
    hub: Hub, token_a: str, uploaded: tuple[str, list[str]]
) -> None:
    study_uid, sops = uploaded
    task_id = hub.create_task(token_a, study_uid, sops).json()["id"]
    hub.wait_for_end(token_a, task_id)

    ack = hub.client.post(
        f"/tasks/{task_id}/acknowledge",
        json={"delivered_sop_instance_uids": [new_uid()]},
        headers=hub.auth(token_a),
    )

    assert ack.status_code == 422


def test_hub_overhead_for_a_four_image_study_is_small(
    hub: Hub, token_a: str, uploaded: tuple[str, list[str]]
) -> None:
    """POST /tasks to a poll that sees COMPLETED, with an algorithm that returns at once.

    What is timed is the hub alone: task creation, dispatch, claim, input
    selection on the four headers, commit and the edge's poll. Warm: the
    first task of a process pays for lazy imports, so one runs before.
    """
    study_uid, sops = uploaded
    warm_up = hub.create_task(token_a, study_uid, sops, algorithm="instant").json()["id"]
    hub.wait_for_end(token_a, warm_up)

    started = time.perf_counter()
    task_id = hub.create_task(token_a, study_uid, sops, algorithm="instant").json()["id"]
    task = hub.wait_for_end(token_a, task_id)
    elapsed = time.perf_counter() - started

    assert task["state"] == TaskState.COMPLETED
    assert elapsed < 0.5, f"the hub took {elapsed:.3f} s around the algorithm"


def test_whole_run_with_sr_for_a_four_image_study(
    hub: Hub, token_a: str, uploaded: tuple[str, list[str]]
) -> None:
    """integrity-check and its TID 1500 SR, end to end (generous: CI machines are shared)."""
    study_uid, sops = uploaded
    hub.wait_for_end(token_a, hub.create_task(token_a, study_uid, sops).json()["id"])

    started = time.perf_counter()
    task = hub.wait_for_end(token_a, hub.create_task(token_a, study_uid, sops).json()["id"])
    elapsed = time.perf_counter() - started

    assert task["state"] == TaskState.COMPLETED
    assert elapsed < 3.0, f"task took {elapsed:.3f} s"


def test_urgent_findings_and_details_reach_the_edge(
    hub: Hub, token_a: str, uploaded: tuple[str, list[str]]
) -> None:
    study_uid, sops = uploaded
    task_id = hub.create_task(token_a, study_uid, sops, algorithm="instant").json()["id"]

    task = hub.wait_for_end(token_a, task_id)

    assert task["state"] == TaskState.COMPLETED
    assert task["urgent"] is True
    assert task["findings"]["summary"] == "4 images seen"
    assert sorted(task["findings"]["details"]["seen"]) == sorted(sops)
