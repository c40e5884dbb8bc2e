"""Polling ``GET /tasks`` cheaply: a listing in a fixed number of queries, and long polling.

Against a real uvicorn hub, on SQLite and PostgreSQL (the ``database_url``
fixture). A long poll (``wait_s`` with ``If-None-Match``) answers 304 after
``wait_s`` when nothing the edge listed changed, and at once when a task is
created; the edge's client uses it and falls back to plain polling against a
hub that refuses ``wait_s`` as an unknown filter (hubs before it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, event, text

from aifi.algorithms.base import Algorithm, Manifest
from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.routes import tasks as task_routes
from aifi.protocol.client import HubClient, HubPeer

from .conftest import Hub, serving

POLL = {"acknowledged": "false"}


@pytest.fixture
def counted_hub(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    manifests: Callable[[], list[Manifest]],
) -> Iterator[tuple[Hub, list[str]]]:
    """A hub and the SQL statements its engine runs (appended as they run)."""
    app = create_app(settings, algorithms=resolver, manifests=manifests)
    statements: list[str] = []

    def record(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(Engine, "before_cursor_execute", record)  # the app's engine starts with it
    with serving(app, settings) as client:
        yield Hub(client, settings), statements
    event.remove(Engine, "before_cursor_execute", record)


def _upload(hub: Hub, token: str, study: tuple[str, list[Path]]) -> tuple[str, list[str]]:
    study_uid, files = study
    response = hub.stow(token, files)
    assert response.status_code == 200
    return study_uid, [i["00081155"]["Value"][0] for i in response.json()["00081199"]["Value"]]


def _finished_tasks(hub: Hub, token: str, uploaded: tuple[str, list[str]], n: int) -> list[str]:
    ids = [hub.create_task(token, *uploaded).json()["id"] for _ in range(n)]
    for task_id in ids:
        hub.wait_for_end(token, task_id)
    return ids


def test_a_poll_costs_the_same_queries_for_one_task_or_five(
    counted_hub: tuple[Hub, list[str]], token_a: str, study: tuple[str, list[Path]]
) -> None:
    hub, statements = counted_hub
    uploaded = _upload(hub, token_a, study)

    def queries_of_one_poll() -> int:
        """SELECTs of one poll; the fewest of three (the hub's workers and janitor query too)."""
        hub.client.get("/tasks", params=POLL, headers=hub.auth(token_a))  # the contact is noted
        counts = []
        for _ in range(3):
            statements.clear()
            listed = hub.client.get("/tasks", params=POLL, headers=hub.auth(token_a)).json()
            assert all(t["results"] for t in listed)
            counts.append(sum(1 for s in statements if s.lstrip().upper().startswith("SELECT")))
        return min(counts)

    _finished_tasks(hub, token_a, uploaded, 1)
    one = queries_of_one_poll()
    _finished_tasks(hub, token_a, uploaded, 4)
    five = queries_of_one_poll()

    assert one == five  # no query per task
    assert five <= 4  # the token, the tasks, their results, their priors


def test_a_long_poll_waits_when_nothing_changed_and_answers_at_once_when_asked_first(
    hub: Hub, token_a: str, study: tuple[str, list[Path]]
) -> None:
    uploaded = _upload(hub, token_a, study)
    (task_id,) = _finished_tasks(hub, token_a, uploaded, 1)
    long_poll = {**POLL, "wait_s": "1"}

    t0 = time.monotonic()
    first = hub.client.get("/tasks", params=long_poll, headers=hub.auth(token_a))
    assert time.monotonic() - t0 < 1.0  # no If-None-Match: nothing to wait for
    assert first.status_code == 200 and [t["id"] for t in first.json()] == [task_id]
    etag = first.headers["etag"]

    t0 = time.monotonic()
    again = hub.client.get(
        "/tasks", params=long_poll, headers={**hub.auth(token_a), "If-None-Match": etag}
    )
    assert time.monotonic() - t0 >= 1.0
    assert again.status_code == 304 and again.headers["etag"] == etag


def test_a_long_poll_answers_as_soon_as_a_task_changes(
    hub: Hub, token_a: str, token_b: str, study: tuple[str, list[Path]]
) -> None:
    uploaded = _upload(hub, token_a, study)
    first = hub.client.get("/tasks", params={**POLL, "wait_s": "20"}, headers=hub.auth(token_a))
    assert first.json() == []
    etag = first.headers["etag"]
    created: list[str] = []

    def create_later() -> None:
        time.sleep(0.5)
        hub.client.get("/tasks", params=POLL, headers=hub.auth(token_b))  # another hospital's
        created.append(hub.create_task(token_a, *uploaded).json()["id"])

    worker = threading.Thread(target=create_later)
    worker.start()
    t0 = time.monotonic()
    changed = hub.client.get(
        "/tasks",
        params={**POLL, "wait_s": "20"},
        headers={**hub.auth(token_a), "If-None-Match": etag},
    )
    waited = time.monotonic() - t0
    worker.join()

    assert changed.status_code == 200
    assert [t["id"] for t in changed.json()] == created
    assert changed.headers["etag"] != etag
    assert 0.4 < waited < 5.0


def test_the_hubs_wait_is_bounded(hub: Hub, token_a: str) -> None:
    response = hub.client.get("/tasks", params={"wait_s": "31"}, headers=hub.auth(token_a))
    assert response.status_code == 422


def test_the_client_long_polls_and_answers_the_unchanged_listing_again(
    hub: Hub, token_a: str, study: tuple[str, list[Path]]
) -> None:
    uploaded = _upload(hub, token_a, study)
    (task_id,) = _finished_tasks(hub, token_a, uploaded, 1)
    client = HubClient(HubPeer(url=str(hub.client.base_url), token=token_a))
    try:
        assert [t.id for t in client.unacknowledged_tasks(wait_s=1)] == [task_id]
        t0 = time.monotonic()
        again = list(client.unacknowledged_tasks(wait_s=1))
        assert time.monotonic() - t0 >= 1.0  # waited at the hub, then 304
        assert [t.id for t in again] == [task_id] and again[0].results
        done = again[0]
        client.acknowledge(task_id, [r.sop_instance_uid for r in done.results])
        t0 = time.monotonic()
        assert list(client.unacknowledged_tasks(wait_s=5)) == []
        assert time.monotonic() - t0 < 2.0  # the acknowledgement changed the listing
    finally:
        client.close()


def test_the_client_polls_plainly_a_hub_that_refuses_wait_s(
    hub: Hub, token_a: str, study: tuple[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub before long polling refuses ``wait_s`` as an unknown filter (400)."""
    monkeypatch.setattr(
        task_routes, "_LIST_FILTERS", frozenset({"state", "acknowledged", "limit", "after"})
    )
    assert (
        hub.client.get("/tasks", params={"wait_s": "1"}, headers=hub.auth(token_a)).status_code
        == 400
    )
    uploaded = _upload(hub, token_a, study)
    (task_id,) = _finished_tasks(hub, token_a, uploaded, 1)
    client = HubClient(HubPeer(url=str(hub.client.base_url), token=token_a))
    try:
        for _ in range(2):
            assert [t.id for t in client.unacknowledged_tasks(wait_s=5)] == [task_id]
    finally:
        client.close()


def test_waiting_polls_hold_no_connection(
    hub: Hub, settings: HubSettings, subscribed: tuple[str, ...]
) -> None:
    """More polls wait than the pool has connections (5 + 10), and the hub still answers."""
    from .conftest import register

    tokens = [register(settings, f"Hospital {i}", subscribed) for i in range(20)]
    etags = [
        hub.client.get("/tasks", params={**POLL, "wait_s": "3"}, headers=hub.auth(t)).headers[
            "etag"
        ]
        for t in tokens
    ]
    answers: list[int] = []

    def wait(token: str, etag: str) -> None:
        with httpx.Client(base_url=str(hub.client.base_url), timeout=30) as client:
            response = client.get(
                "/tasks",
                params={**POLL, "wait_s": "3"},
                headers={**hub.auth(token), "If-None-Match": etag},
            )
            answers.append(response.status_code)

    waiting = [threading.Thread(target=wait, args=pair) for pair in zip(tokens, etags, strict=True)]
    for thread in waiting:
        thread.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    assert hub.client.get("/tasks", headers=hub.auth(tokens[0])).status_code == 200
    assert time.monotonic() - t0 < 1.0
    for thread in waiting:
        thread.join()
    assert answers == [304] * 20


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)
def test_on_postgresql_a_waiting_poll_is_woken_by_the_change_not_checked_on_a_timer(
    counted_hub: tuple[Hub, list[str]],
    settings: HubSettings,
    token_a: str,
    study: tuple[str, list[Path]],
) -> None:
    """The trigger of migration 0013 notifies the API when a task changes, in any process.

    While the poll waits with nothing changing, the hub runs no check (SQLite
    would check every quarter second); a task acknowledged through another
    connection, as another hub process would, wakes it at once.
    """
    hub, statements = counted_hub
    uploaded = _upload(hub, token_a, study)
    (task_id,) = _finished_tasks(hub, token_a, uploaded, 1)
    first = hub.client.get("/tasks", params={**POLL, "wait_s": "1"}, headers=hub.auth(token_a))
    etag = first.headers["etag"]
    answered: list[tuple[float, httpx.Response]] = []

    def long_poll() -> None:
        t0 = time.monotonic()
        response = hub.client.get(
            "/tasks",
            params={**POLL, "wait_s": "20"},
            headers={**hub.auth(token_a), "If-None-Match": etag},
        )
        answered.append((time.monotonic() - t0, response))

    waiting = threading.Thread(target=long_poll)
    waiting.start()
    time.sleep(0.5)  # the poll is waiting (its first look is done)
    checks_before = sum("count(" in s.lower() for s in statements)
    time.sleep(2.0)
    checks_while_idle = sum("count(" in s.lower() for s in statements) - checks_before
    assert settings.database_url is not None
    elsewhere = create_engine(settings.database_url)  # another process's connection
    try:
        with elsewhere.begin() as connection:
            connection.execute(
                text("UPDATE tasks SET acknowledged = true, updated_at = now() WHERE id = :id"),
                {"id": task_id},
            )
        changed_at = time.monotonic()
        waiting.join(10)
    finally:
        elsewhere.dispose()

    assert checks_while_idle == 0, f"{checks_while_idle} checks while nothing changed"
    ((waited, response),) = answered
    assert response.status_code == 200 and response.json() == []  # acknowledged: not listed
    assert time.monotonic() - changed_at < 1.5  # woken by the notification, not the 5 s check
    assert waited > 2.0
