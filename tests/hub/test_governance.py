"""Catalog, subscriptions, credentials and the audit trail, as operators and auditors use them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aifi.algorithms.base import Algorithm, AlgorithmInput, Findings, Manifest
from aifi.protocol.schemas import TaskState

from .conftest import Hub, new_uid, pseudonymized


class Echo:
    """A second algorithm the test hospitals have no agreement for unless a test adds one."""

    manifest = Manifest(
        id="echo",
        version="2.0",
        name="echo",
        vendor="tests",
        intended_use="tests",
        regulatory_status="CE class IIa (MDR), tests only",
        accepts=(),
        produces=(),
    )

    def run(self, inputs: AlgorithmInput) -> Findings:
        return Findings(summary=f"{len(inputs.instances)} images")


@pytest.fixture
def test_algorithms() -> dict[str, Algorithm]:
    return {"echo": Echo()}


@pytest.fixture
def subscribed() -> tuple[str, ...]:
    return ("integrity-check",)


@pytest.fixture
def uploaded(hub: Hub, token_a: str, study: tuple[str, list[Path]]) -> tuple[str, list[str]]:
    study_uid, files = study
    assert hub.stow(token_a, files).status_code == 200
    return study_uid, [f.stem for f in files]


def _events(hub: Hub, auditor: str, **params: Any) -> list[dict[str, Any]]:
    response = hub.client.get("/audit", params=params, headers=hub.auth(auditor))
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()
    return events


def _subscribe(hub: Hub, operator: str, hospital_id: str, **fields: Any) -> dict[str, Any]:
    body = {
        "hospital_id": hospital_id,
        "algorithm_id": "echo",
        "agreement_reference": "DPA-2026-017",
        "controller": "Hospital A",
        "processor": "National AI hub",
        "sub_processor": "Echo Imaging Ltd",
        **fields,
    }
    response = hub.client.post("/subscriptions", json=body, headers=hub.auth(operator))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _hospital_id(hub: Hub, operator: str, name: str = "Hospital A") -> str:
    hospitals = hub.client.get("/hospitals", headers=hub.auth(operator)).json()
    return str(next(h["id"] for h in hospitals if h["name"] == name))


def test_the_catalog_lists_installed_manifests(hub: Hub, token_a: str) -> None:
    catalog = hub.client.get("/catalog", headers=hub.auth(token_a)).json()
    entries = {(e["algorithm_id"], e["version"]): e for e in catalog}
    assert entries[("integrity-check", "1.0.0")]["state"] == "active"
    echo = entries[("echo", "2.0")]
    assert echo["regulatory_status"] == "CE class IIa (MDR), tests only"
    assert echo["vendor"] == "tests"


def test_a_task_without_an_agreement_is_refused_with_the_reason_and_audited(
    hub: Hub, token_a: str, auditor_token: str, uploaded: tuple[str, list[str]]
) -> None:
    study_uid, sops = uploaded
    refused = hub.create_task(token_a, study_uid, sops, algorithm="echo")

    assert refused.status_code == 403
    assert "no agreement for algorithm 'echo'" in refused.json()["detail"]
    (event,) = _events(hub, auditor_token, action="task.refused")
    assert event["algorithm"] == "echo"
    assert event["detail"]["status"] == 403
    assert "no agreement" in event["detail"]["reason"]


def test_a_task_outside_the_subscription_period_is_refused(
    hub: Hub,
    token_a: str,
    operator_token: str,
    auditor_token: str,
    uploaded: tuple[str, list[str]],
) -> None:
    study_uid, sops = uploaded
    hospital_id = _hospital_id(hub, operator_token)
    now = datetime.now(UTC)
    _subscribe(hub, operator_token, hospital_id, valid_from=(now + timedelta(days=30)).isoformat())
    _subscribe(
        hub,
        operator_token,
        hospital_id,
        valid_from=(now - timedelta(days=60)).isoformat(),
        valid_until=(now - timedelta(days=1)).isoformat(),
    )

    refused = hub.create_task(token_a, study_uid, sops, algorithm="echo")

    assert refused.status_code == 403
    assert "is valid now" in refused.json()["detail"]
    assert "DPA-2026-017" in refused.json()["detail"]
    (event,) = _events(hub, auditor_token, action="task.refused")
    assert "valid now" in event["detail"]["reason"]


def test_a_subscribed_task_records_version_and_agreement_and_ending_it_stops_new_tasks(
    hub: Hub,
    token_a: str,
    operator_token: str,
    auditor_token: str,
    uploaded: tuple[str, list[str]],
) -> None:
    study_uid, sops = uploaded
    subscription = _subscribe(hub, operator_token, _hospital_id(hub, operator_token))
    created = hub.client.post(
        "/tasks",
        json={
            "client_task_id": "t-1",
            "algorithm_id": "echo",
            "study_instance_uid": study_uid,
            "sop_instance_uids": sops,
            "correlation_id": "corr-42",
        },
        headers=hub.auth(token_a),
    )
    assert created.status_code == 201, created.text
    task = hub.wait_for_end(token_a, created.json()["id"])
    assert task["state"] == TaskState.COMPLETED
    assert task["algorithm_version"] == "2.0"

    # run.completed commits with the task's state and is sealed into the chain just after
    # (docs/audit.md): the trail may lag the task's state by that moment
    deadline = time.monotonic() + 10
    while True:
        trail = [e for e in _events(hub, auditor_token) if e["correlation_id"] == "corr-42"]
        if len(trail) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [e["action"] for e in trail] == [
        "task.created",
        "run.started",
        "results.made",
        "run.completed",
    ]
    assert {e["agreement"] for e in trail} == {"DPA-2026-017"}
    assert {e["algorithm_version"] for e in trail} == {"2.0"}
    assert {e["task"] for e in trail} == {task["id"]}

    ended = hub.client.post(
        f"/subscriptions/{subscription['id']}/end", headers=hub.auth(operator_token)
    )
    assert ended.status_code == 200
    again = hub.create_task(token_a, study_uid, sops, algorithm="echo")
    assert again.status_code == 403


def test_a_suspended_version_takes_no_new_tasks_until_reactivated(
    hub: Hub,
    token_a: str,
    operator_token: str,
    auditor_token: str,
    uploaded: tuple[str, list[str]],
) -> None:
    study_uid, sops = uploaded
    url = "/catalog/integrity-check/1.0.0/state"
    as_operator = hub.auth(operator_token)
    suspended = hub.client.post(
        url, json={"state": "suspended", "reason": "field safety notice"}, headers=as_operator
    )
    assert suspended.json()["state"] == "suspended"

    refused = hub.create_task(token_a, study_uid, sops)
    assert refused.status_code == 403
    assert "suspended" in refused.json()["detail"]

    hub.client.post(url, json={"state": "active"}, headers=as_operator)
    assert hub.create_task(token_a, study_uid, sops).status_code == 201
    changes = _events(hub, auditor_token, action="catalog.state")
    assert [(e["detail"]["from"], e["detail"]["to"]) for e in changes] == [
        ("active", "suspended"),
        ("suspended", "active"),
    ]
    assert changes[0]["detail"]["reason"] == "field safety notice"
    assert changes[0]["actor"].startswith("operator:")
    refusal = _events(hub, auditor_token, action="task.refused")[0]
    assert refusal["agreement"] == "connection-test"


def test_a_pinned_version_the_hub_does_not_run_is_refused(
    hub: Hub, token_a: str, operator_token: str, uploaded: tuple[str, list[str]]
) -> None:
    study_uid, sops = uploaded
    _subscribe(hub, operator_token, _hospital_id(hub, operator_token), algorithm_version="1.0")
    refused = hub.create_task(token_a, study_uid, sops, algorithm="echo")
    assert refused.status_code == 403
    assert "echo 1.0" in refused.json()["detail"]


def test_a_rotated_token_works_beside_the_old_one_until_that_is_revoked(
    hub: Hub, token_a: str, operator_token: str, auditor_token: str
) -> None:
    as_operator = hub.auth(operator_token)
    hospitals = hub.client.get("/hospitals", headers=as_operator).json()
    principal_id = hospitals[0]["principal_id"]
    (old,) = next(
        p["tokens"]
        for p in hub.client.get("/principals", headers=as_operator).json()
        if p["id"] == principal_id
    )

    issued = hub.client.post(f"/principals/{principal_id}/tokens", headers=as_operator).json()
    new_token = issued["token"]
    for token in (token_a, new_token):
        assert hub.client.get("/tasks", headers=hub.auth(token)).status_code == 200

    assert hub.client.delete(f"/tokens/{old['id']}", headers=as_operator).status_code == 200
    assert hub.client.get("/tasks", headers=hub.auth(token_a)).status_code == 401
    assert hub.client.get("/tasks", headers=hub.auth(new_token)).status_code == 200
    actions = [e["action"] for e in _events(hub, auditor_token)]
    assert actions[-2:] == ["token.issued", "token.revoked"]


def test_hub_events_carry_no_identity_and_the_chain_verifies(
    hub: Hub, token_a: str, auditor_token: str, dicom_dir: Path
) -> None:
    identified = pseudonymized("CT_small.dcm", dicom_dir, study=new_uid(), identity_removed=False)
    assert hub.stow(token_a, [identified]).status_code == 409

    exported = hub.client.get("/audit/export", headers=hub.auth(auditor_token))
    assert exported.status_code == 200
    assert "Doe" not in exported.text
    assert "123456" not in exported.text
    (refusal,) = _events(hub, auditor_token, action="stow.refused")
    assert refusal["detail"]["refused"] == 1
    verified = hub.client.get("/audit/verify", headers=hub.auth(auditor_token)).json()
    assert verified["intact"] is True
    assert verified["head"]["seq"] == len(exported.text.splitlines())


def test_auditors_read_but_cannot_change(hub: Hub, auditor_token: str) -> None:
    as_auditor = hub.auth(auditor_token)
    assert hub.client.get("/audit", headers=as_auditor).status_code == 200
    assert hub.client.get("/usage?month=2026-11", headers=as_auditor).status_code == 200
    changed = hub.client.post(
        "/catalog/integrity-check/1.0.0/state", json={"state": "retired"}, headers=as_auditor
    )
    assert changed.status_code == 403
