"""The hub console over HTTP: login, cookie and CSRF rules, each page, re-run, tenant isolation.

Two hospitals each send a study; A also has a task that failed and an
instance the hub refused. Every console page is then read as an operator,
an auditor and B's administrator: B never sees anything of A's, and only
the operator may act. The browser test (test_console_browser.py) clicks
through the same pages in Chromium.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute

from aifi.algorithms.base import Algorithm
from aifi.hub.console.pages import router
from aifi.protocol.schemas import TaskState

from .conftest import Hub, new_uid, pseudonymized
from .consoletools import Flaky, csrf_of, login


@pytest.fixture
def switch(tmp_path: Path) -> Path:
    path = tmp_path / "vendor-down"
    path.touch()
    return path


@pytest.fixture
def test_algorithms(switch: Path) -> dict[str, Algorithm]:
    return {"flaky": Flaky(switch)}


class Sent:
    """What one hospital sent, and what the hub made of it."""

    def __init__(self, hub: Hub, token: str, folder: Path, *, fail: bool) -> None:
        folder.mkdir()
        self.study = new_uid()
        files = [pseudonymized("CT_small.dcm", folder, study=self.study) for _ in range(2)]
        assert hub.stow(token, files).status_code == 200
        sops = [f.stem for f in files]
        done = hub.create_task(token, self.study, sops)
        self.completed = hub.wait_for_end(token, done.json()["id"])["id"]
        self.failed = ""
        if fail:
            flaky = hub.create_task(token, self.study, sops, algorithm="flaky")
            ended = hub.wait_for_end(token, flaky.json()["id"])
            assert ended["state"] == TaskState.CANCELED
            self.failed = ended["id"]
            refused = pseudonymized(
                "CT_small.dcm", folder, study=self.study, identity_removed=False
            )
            self.refused_sop = refused.stem
            hub.stow(token, [refused])

    @property
    def secrets(self) -> set[str]:
        return {s for s in (self.study, self.completed, self.failed) if s}


@pytest.fixture
def sent(hub: Hub, token_a: str, token_b: str, tmp_path: Path) -> tuple[Sent, Sent]:
    return (
        Sent(hub, token_a, tmp_path / "a", fail=True),
        Sent(hub, token_b, tmp_path / "b", fail=False),
    )


@pytest.fixture
def browser_client(hub: Hub) -> Iterator[httpx.Client]:
    """A second client with its own cookie jar, as another person's browser."""
    with httpx.Client(base_url=hub.client.base_url, timeout=30, follow_redirects=True) as client:
        yield client


def _console_pages() -> list[str]:
    return [
        route.path
        for route in router.routes
        if isinstance(route, APIRoute) and "GET" in route.methods and route.path != "/console/login"
    ]


def test_pages_need_a_session_and_login_sets_a_strict_cookie(
    hub: Hub, operator_token: str, browser_client: httpx.Client
) -> None:
    for path in _console_pages():
        url = path.replace("{task_id}", "x")
        anonymous = browser_client.get(url, follow_redirects=False)
        assert anonymous.status_code == 303, url
        assert anonymous.headers["location"].startswith("/console/login?next=")

    wrong = login(browser_client, "not-a-token")
    assert wrong.status_code == 401 and "unknown or revoked token" in wrong.text

    answer = login(browser_client, operator_token)
    assert answer.status_code == 303 and answer.headers["location"] == "/console"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert operator_token not in cookie
    assert browser_client.get("/console").status_code == 200

    forged = browser_client.cookies["aifi_console"][:-4] + "AAAA"
    browser_client.cookies.set("aifi_console", forged)
    assert browser_client.get("/console", follow_redirects=False).status_code == 303


def test_a_login_form_from_elsewhere_is_refused(hub: Hub, operator_token: str) -> None:
    with httpx.Client(base_url=hub.client.base_url) as elsewhere:
        answer = elsewhere.post(
            "/console/login", data={"token": operator_token, "form_token": "guess"}
        )
    assert answer.status_code == 401 and "expired" in answer.text


def test_operator_sees_every_page_and_reruns_a_failed_task(
    hub: Hub,
    sent: tuple[Sent, Sent],
    operator_token: str,
    switch: Path,
    browser_client: httpx.Client,
    token_a: str,
) -> None:
    a, _b = sent
    login(browser_client, operator_token)
    for path in _console_pages():
        page = browser_client.get(path.replace("{task_id}", a.failed))
        assert page.status_code == 200, path
        assert path.endswith(".csv") or "<main>" in page.text

    hospitals = browser_client.get("/console/hospitals").text
    assert "Hospital A" in hospitals and "Hospital B" in hospitals
    assert "never" not in hospitals  # both edges called: their last contact is shown
    tasks = browser_client.get("/console/tasks", params={"state": "CANCELED"}).text
    assert a.failed in tasks and a.completed not in tasks
    refusals = browser_client.get("/console/refusals").text
    assert a.refused_sop in refusals and "not de-identified" in refusals
    assert "chain verified" in browser_client.get("/console/audit").text
    usage = browser_client.get("/console/usage.csv")
    assert usage.headers["content-type"].startswith("text/csv")
    assert "Hospital A,flaky" in usage.text

    page = browser_client.get(f"/console/tasks/{a.failed}").text
    assert "received at hub" in page and "canceled" in page
    assert "did not answer" in page  # the reason
    no_csrf = browser_client.post(f"/console/tasks/{a.failed}/rerun", data={"csrf": "forged"})
    assert no_csrf.status_code == 403
    switch.unlink()  # the vendor's service is back
    rerun = browser_client.post(
        f"/console/tasks/{a.failed}/rerun", data={"csrf": csrf_of(page)}, follow_redirects=False
    )
    assert rerun.status_code == 303
    assert hub.wait_for_end(token_a, a.failed)["state"] == TaskState.COMPLETED
    again = browser_client.get(f"/console/tasks/{a.failed}").text
    assert "re-run requested" in again and "completed" in again
    assert "earlier reason: the vendor" in again
    assert "Re-run this task" not in again  # only a canceled task is re-run


def test_operator_suspends_and_activates_a_version_and_ends_a_subscription(
    hub: Hub, operator_token: str, token_a: str, browser_client: httpx.Client
) -> None:
    login(browser_client, operator_token)
    page = browser_client.get("/console/catalog").text
    url = "/console/catalog/integrity-check/1.0.0/state"
    data = {"csrf": csrf_of(page), "state": "suspended", "reason": "console test"}
    assert browser_client.post(url, data=data).status_code == 200
    catalog = hub.client.get("/catalog", headers=hub.auth(operator_token)).json()
    (entry,) = [e for e in catalog if e["algorithm_id"] == "integrity-check"]
    assert entry["state"] == "suspended"
    browser_client.post(url, data={**data, "state": "active"})
    catalog = hub.client.get("/catalog", headers=hub.auth(operator_token)).json()
    assert [e["state"] for e in catalog if e["algorithm_id"] == "integrity-check"] == ["active"]

    page = browser_client.get("/console/subscriptions").text
    hospitals = hub.client.get("/hospitals", headers=hub.auth(operator_token)).json()
    hospital_id = hospitals[0]["id"]
    added = browser_client.post(
        "/console/subscriptions",
        data={
            "csrf": csrf_of(page),
            "hospital_id": hospital_id,
            "algorithm_id": "integrity-check",
            "agreement_reference": "AGR-2026-17",
            "controller": "Hospital A",
            "processor": "National AI hub",
            "valid_from": "2026-01-01",
        },
    )
    assert "subscription AGR-2026-17 added" in added.text
    (subscription,) = [
        s
        for s in hub.client.get(
            "/subscriptions", params={"hospital_id": hospital_id}, headers=hub.auth(operator_token)
        ).json()
        if s["agreement_reference"] == "AGR-2026-17"
    ]
    ended = browser_client.post(
        f"/console/subscriptions/{subscription['id']}/end", data={"csrf": csrf_of(added.text)}
    )
    assert "subscription AGR-2026-17 ended" in ended.text


def test_a_hospital_sees_only_itself_and_auditors_change_nothing(
    hub: Hub,
    sent: tuple[Sent, Sent],
    token_b: str,
    auditor_token: str,
    operator_token: str,
    browser_client: httpx.Client,
) -> None:
    a, b = sent
    hospitals = hub.client.get("/hospitals", headers=hub.auth(operator_token)).json()
    a_ids = {h["id"] for h in hospitals if h["name"] == "Hospital A"}
    secrets = a.secrets | a_ids | {"Hospital A", a.refused_sop}
    login(browser_client, token_b)
    for path in _console_pages():
        url = path.replace("{task_id}", a.failed)
        page = browser_client.get(url)
        leaked = {s for s in secrets if s in page.text and s not in url}
        assert not leaked, f"{url} shows B's administrator A's {leaked}"
        if "{task_id}" in path:
            assert page.status_code == 404, url
        else:
            assert page.status_code == 200, url
    own = browser_client.get("/console/tasks").text
    assert b.completed in own
    assert browser_client.get(f"/console/tasks/{b.completed}").status_code == 200
    csrf = csrf_of(browser_client.get("/console/catalog").text)
    for url, data in _actions(a.failed, csrf):
        assert browser_client.post(url, data=data).status_code == 403, f"{url} as hospital B"
    assert hub.client.get(f"/tasks/{a.failed}", headers=hub.auth(operator_token)).status_code

    with httpx.Client(base_url=hub.client.base_url, follow_redirects=True) as auditor:
        login(auditor, auditor_token)
        assert "Hospital A" in auditor.get("/console/hospitals").text
        csrf = csrf_of(auditor.get("/console/catalog").text)
        for url, data in _actions(a.failed, csrf):
            assert auditor.post(url, data=data).status_code == 403, f"{url} as auditor"
        assert "Re-run this task" not in auditor.get(f"/console/tasks/{a.failed}").text


def _actions(task_id: str, csrf: str) -> list[tuple[str, dict[str, str]]]:
    return [
        (f"/console/tasks/{task_id}/rerun", {"csrf": csrf}),
        ("/console/catalog/integrity-check/1.0.0/state", {"csrf": csrf, "state": "suspended"}),
        (
            "/console/subscriptions",
            {
                "csrf": csrf,
                "hospital_id": "x",
                "algorithm_id": "integrity-check",
                "agreement_reference": "X",
                "controller": "X",
                "processor": "X",
            },
        ),
        ("/console/subscriptions/x/end", {"csrf": csrf}),
    ]


def test_revoking_the_token_ends_the_session(
    hub: Hub, operator_token: str, browser_client: httpx.Client
) -> None:
    login(browser_client, operator_token)
    assert browser_client.get("/console").status_code == 200
    principals = hub.client.get("/principals", headers=hub.auth(operator_token)).json()
    (me,) = [p for p in principals if p["name"] == "Operator"]
    # a second operator token to revoke the first with
    second = hub.client.post(
        f"/principals/{me['id']}/tokens", headers=hub.auth(operator_token)
    ).json()
    token_id = me["tokens"][0]["id"]
    assert hub.client.delete(f"/tokens/{token_id}", headers=hub.auth(second["token"])).status_code
    assert browser_client.get("/console", follow_redirects=False).status_code == 303


def test_health_ready_and_offline_api_docs(hub: Hub) -> None:
    assert hub.client.get("/health").json() == {"status": "alive"}
    ready = hub.client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "storage": "ok"}
    for page in ("/docs", "/redoc"):
        html = hub.client.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(url.startswith("/docs-assets/") for url in assets), assets
        for url in assets:
            assert hub.client.get(url).status_code == 200, url
    assert "/console" in hub.client.get("/", follow_redirects=True).url.path
