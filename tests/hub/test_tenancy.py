"""Every query is scoped to the calling hospital; other hospitals' data is 404, never 403."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aifi.protocol.schemas import TaskState

from .conftest import Hub


@pytest.fixture
def task_of_a(hub: Hub, token_a: str, study: tuple[str, list[Path]]) -> dict[str, Any]:
    study_uid, files = study
    assert hub.stow(token_a, files).status_code == 200
    created = hub.create_task(token_a, study_uid, [f.stem for f in files])
    task = hub.wait_for_end(token_a, created.json()["id"])
    assert task["state"] == TaskState.COMPLETED
    return task


def test_b_cannot_read_list_or_acknowledge_a_task_of_a(
    hub: Hub, token_b: str, task_of_a: dict[str, Any]
) -> None:
    task_id = task_of_a["id"]
    as_b = hub.auth(token_b)

    assert hub.client.get(f"/tasks/{task_id}", headers=as_b).status_code == 404
    assert hub.client.get("/tasks", headers=as_b).json() == []
    ack = hub.client.post(
        f"/tasks/{task_id}/acknowledge", json={"delivered_sop_instance_uids": []}, headers=as_b
    )
    assert ack.status_code == 404


def test_b_cannot_retrieve_a_s_instances_or_results(
    hub: Hub,
    token_a: str,
    token_b: str,
    task_of_a: dict[str, Any],
    study: tuple[str, list[Path]],
) -> None:
    study_uid, files = study
    (result,) = task_of_a["results"]
    instance_url = (
        f"/dicomweb/studies/{study_uid}/series/{_series(files[0])}/instances/{files[0].stem}"
    )
    result_url = (
        f"/dicomweb/studies/{result['study_instance_uid']}/series/"
        f"{result['series_instance_uid']}/instances/{result['sop_instance_uid']}"
    )

    for url in (instance_url, result_url, f"/dicomweb/studies/{study_uid}"):
        assert hub.client.get(url, headers=hub.auth(token_a)).status_code == 200
        assert hub.client.get(url, headers=hub.auth(token_b)).status_code == 404


def test_b_cannot_start_a_task_on_a_s_instances(
    hub: Hub, token_b: str, task_of_a: dict[str, Any], study: tuple[str, list[Path]]
) -> None:
    study_uid, files = study
    response = hub.create_task(token_b, study_uid, [f.stem for f in files])
    assert response.status_code == 422


def test_same_instance_sent_by_two_hospitals_is_kept_apart(
    hub: Hub, token_a: str, token_b: str, study: tuple[str, list[Path]]
) -> None:
    study_uid, files = study
    assert hub.stow(token_a, files).status_code == 200
    assert hub.stow(token_b, files).status_code == 200

    for token in (token_a, token_b):
        created = hub.create_task(token, study_uid, [f.stem for f in files], client_task_id="same")
        assert created.status_code == 201


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["no token", "unknown token", "not bearer"],
)
def test_requests_without_a_valid_token_are_401(hub: Hub, headers: dict[str, str]) -> None:
    for method, url in (("GET", "/tasks"), ("POST", "/dicomweb/studies"), ("GET", "/tasks/x")):
        response = hub.client.request(method, url, headers=headers)
        assert response.status_code == 401, (method, url)
        assert response.headers["www-authenticate"] == "Bearer"


def _series(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
