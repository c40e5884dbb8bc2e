"""Tenant isolation, exhaustively: every route of the OpenAPI document, called as someone else.

Hospitals A and B each have a study, a completed task and a result. For
every operation the hub publishes, path parameters are filled with A's
identifiers and the call is made

* without a token: 401;
* with B's token: 403 where the hospital role is not admitted, otherwise
  no A identifier that B did not send itself comes back, a read of A's
  resource is 404, and A's tasks, results, subscriptions, tokens and the
  catalog are unchanged afterwards;
* with the operator's token on hospital routes and the auditor's on
  operator routes: 403.

A route added later is walked automatically; one whose path parameter has
no value below, or that declares no role, fails the test.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from aifi.protocol.schemas import TaskState

from .conftest import Hub, multipart, new_uid, pseudonymized, split_multipart

PARAMETERS = {
    "study": "study",
    "series": "series",
    "sop": "sop",
    "task_id": "task_id",
    "principal_id": "principal_id",
    "token_id": "token_id",
    "subscription_id": "subscription_id",
    "algorithm_id": "algorithm_id",
    "version": "version",
    "tag": "tag",
    "uid": "client_task_id",  # a workitem UID is its task's client_task_id
    "aet": "aet",  # a UPS-RS subscriber's AE title
    "frames": "frames",  # WADO-RS frame list
}
"""Path parameter name → the key of A's identifiers substituted for it."""

PUBLIC_PARAMETERS = {"algorithm_id", "version", "tag", "aet", "frames"}  # no tenant data


class Tenant:
    """One hospital's identifiers, learnt through the API as its edge and the operator see them."""

    def __init__(self, hub: Hub, token: str, name: str, folder: Path, operator: str) -> None:
        self.token = token
        study, series = new_uid(), new_uid()
        files = [
            pseudonymized("CT_small.dcm", folder, study=study, series=series) for _ in range(2)
        ]
        assert hub.stow(token, files).status_code == 200
        client_task_id = uuid.uuid4().hex
        created = hub.create_task(
            token, study, [f.stem for f in files], client_task_id=client_task_id
        )
        assert created.status_code == 201, created.text
        task = hub.wait_for_end(token, created.json()["id"])
        assert task["state"] == TaskState.COMPLETED, task["reason"]
        (result,) = task["results"]
        hospitals = hub.client.get("/hospitals", headers=hub.auth(operator)).json()
        (me,) = [h for h in hospitals if h["name"] == name]
        principals = hub.client.get("/principals", headers=hub.auth(operator)).json()
        (principal,) = [p for p in principals if p["id"] == me["principal_id"]]
        subscriptions = hub.client.get(
            "/subscriptions", params={"hospital_id": me["id"]}, headers=hub.auth(operator)
        ).json()
        self.ids = {
            "study": study,
            "series": series,
            "sop": files[0].stem,
            "sop_2": files[1].stem,
            "task_id": task["id"],
            "client_task_id": client_task_id,
            "result_series": result["series_instance_uid"],
            "result_sop": result["sop_instance_uid"],
            "hospital_id": me["id"],
            "principal_id": principal["id"],
            "token_id": principal["tokens"][0]["id"],
            "subscription_id": subscriptions[0]["id"],
            "algorithm_id": "integrity-check",
            "version": "1.0.0",
            "tag": "7FE00010",  # Pixel Data, for WADO-RS Retrieve Bulkdata
            "aet": "ISOLATION",  # an AE title subscribing to UPS-RS events
            "frames": "1",  # WADO-RS Retrieve Frames, rendered frames
        }

    @property
    def secrets(self) -> set[str]:
        """What B must never learn from the hub."""
        return {v for k, v in self.ids.items() if k not in PUBLIC_PARAMETERS}


def _body(method: str, path: str, a: Tenant) -> dict[str, Any]:
    """A plausible request body for each write, aimed at A's data."""
    if path == "/tasks":
        return {
            "json": {
                "client_task_id": a.ids["client_task_id"],
                "algorithm_id": "integrity-check",
                "study_instance_uid": a.ids["study"],
                "sop_instance_uids": [a.ids["sop"]],
            }
        }
    if path.endswith("/feedback") and method == "post":
        return {"json": {"verdict": "disagree"}}
    if path.endswith("/acknowledge"):
        return {"json": {"delivered_sop_instance_uids": [a.ids["result_sop"]]}}
    if path.startswith("/dicomweb/studies") and method == "post":
        body, content_type = multipart([])
        return {"content": body, "headers": {"Content-Type": content_type}}
    if path.endswith("/state"):
        return {"json": {"state": "suspended", "reason": "isolation test"}}
    if path == "/hospitals":
        return {"json": {"name": "Intruder", "subscribe": []}}
    if path == "/principals":
        return {"json": {"name": "Intruder", "role": "operator"}}
    if path == "/subscriptions":
        return {
            "json": {
                "hospital_id": a.ids["hospital_id"],
                "algorithm_id": "integrity-check",
                "agreement_reference": "X",
                "controller": "X",
                "processor": "X",
            }
        }
    return {}


def _operations(hub: Hub) -> list[tuple[str, str, dict[str, Any]]]:
    document = hub.client.get("/openapi.json").json()
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _url(path: str, operation: dict[str, Any], a: Tenant) -> tuple[str, dict[str, str]]:
    def fill(match: re.Match[str]) -> str:
        name = match[1]
        assert name in PARAMETERS, f"path parameter {name!r} of {path}: add A's value to the test"
        return a.ids[PARAMETERS[name]]

    query = {}
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "query" and parameter.get("required"):
            assert parameter["name"] == "month", f"required query {parameter['name']} of {path}"
            query["month"] = f"{datetime.now(UTC):%Y-%m}"
    return re.sub(r"\{(\w+)\}", fill, path), query


def _snapshot(hub: Hub, a: Tenant, operator: str) -> str:
    """A digest of everything of A's a write by someone else could change."""
    as_a, as_op = hub.auth(a.token), hub.auth(operator)
    result = hub.client.get(
        f"/dicomweb/studies/{a.ids['study']}/series/{a.ids['result_series']}"
        f"/instances/{a.ids['result_sop']}",
        headers=as_a,
    )
    (sr,) = split_multipart(result.content, result.headers["content-type"])
    parts = [
        hub.client.get("/tasks", headers=as_a).text,
        hub.client.get(f"/dicomweb/studies/{a.ids['study']}", headers=as_a).status_code,
        hashlib.sha256(sr).hexdigest(),
        hub.client.get(
            "/subscriptions", params={"hospital_id": a.ids["hospital_id"]}, headers=as_op
        ).text,
        hub.client.get("/principals", headers=as_op).text,
        hub.client.get("/catalog", headers=as_op).text,
    ]
    return "\n".join(str(p) for p in parts)


@pytest.fixture
def tenants(
    hub: Hub, token_a: str, token_b: str, operator_token: str, tmp_path: Path
) -> tuple[Tenant, Tenant]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Tenant(hub, token_a, "Hospital A", tmp_path / "a", operator_token)
    b = Tenant(hub, token_b, "Hospital B", tmp_path / "b", operator_token)
    return a, b


def _call(
    hub: Hub,
    method: str,
    url: str,
    query: dict[str, str],
    token: str | None,
    request: dict[str, Any],
) -> httpx.Response:
    headers = dict(request.get("headers", {}))
    if token is not None:
        headers.update(hub.auth(token))
    return hub.client.request(
        method.upper(),
        url,
        params=query,
        headers=headers,
        json=request.get("json"),
        content=request.get("content"),
    )


def _same(after: str, before: str) -> bool:
    if after != before:
        changed = [
            line
            for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="")
        ][2:]
        print("\n".join(changed))
    return after == before


def test_every_route_keeps_hospitals_apart(
    hub: Hub, tenants: tuple[Tenant, Tenant], operator_token: str, auditor_token: str
) -> None:
    a, b = tenants
    operations = _operations(hub)
    assert len(operations) >= 20
    before = _snapshot(hub, a, operator_token)

    for method, path, operation in operations:
        where = f"{method.upper()} {path}"
        roles = operation.get("x-aifi-roles")
        assert roles and "public" not in roles, f"{where} declares no role gate"
        url, query = _url(path, operation, a)
        request = _body(method, path, a)

        anonymous = _call(hub, method, url, query, None, request)
        assert anonymous.status_code == 401, f"{where} without a token: {anonymous.status_code}"

        as_b = _call(hub, method, url, query, b.token, request)
        if "hospital" not in roles:
            assert as_b.status_code == 403, f"{where} as hospital B: {as_b.status_code}"
        else:
            sent = url + str(request.get("json", ""))
            leaked = {s for s in a.secrets if s in as_b.text and s not in sent}
            assert not leaked, f"{where} as hospital B returned A's {leaked}"
            a_specific = set(re.findall(r"\{(\w+)\}", path)) - PUBLIC_PARAMETERS
            if method == "get" and a_specific:
                assert as_b.status_code == 404, f"{where} as B: {as_b.status_code}"
        assert _same(_snapshot(hub, a, operator_token), before), f"{where} as B changed A's data"

        if "operator" not in roles:
            as_operator = _call(hub, method, url, query, operator_token, request)
            assert as_operator.status_code == 403, f"{where} as operator"
        if "auditor" not in roles:
            as_auditor = _call(hub, method, url, query, auditor_token, request)
            assert as_auditor.status_code == 403, f"{where} as auditor"
            assert _same(_snapshot(hub, a, operator_token), before), (
                f"{where} as auditor changed data"
            )


def test_a_revoked_or_unknown_token_is_401_everywhere(
    hub: Hub, tenants: tuple[Tenant, Tenant], operator_token: str
) -> None:
    a, _b = tenants
    revoked = hub.client.delete(f"/tokens/{a.ids['token_id']}", headers=hub.auth(operator_token))
    assert revoked.status_code == 200
    for method, path, operation in _operations(hub):
        url, query = _url(path, operation, a)
        for token in (a.token, "not-a-token"):
            response = _call(hub, method, url, query, token, _body(method, path, a))
            assert response.status_code == 401, f"{method.upper()} {path}"
