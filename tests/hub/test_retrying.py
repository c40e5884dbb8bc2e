"""A PostgreSQL connection dropped in the middle of a request is retried, not answered 500.

The hub's connection is really terminated (``pg_terminate_backend``) by the
server at the moment the request writes its first row of tasks, instances
or audit events; the request is run again on a new connection
(:func:`aifi.hub.db.retrying`, the audit log's own retry) and the client
sees one ordinary answer, with the data written exactly once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from aifi.algorithms.base import Algorithm, Manifest
from aifi.hub.app import create_app
from aifi.hub.auditing import audit_log
from aifi.hub.config import HubSettings
from aifi.hub.models import Instance, Task

from .conftest import Hub, serving

pytestmark = pytest.mark.postgresql


class DropConnection:
    """Terminates the hub's own PostgreSQL backend before the first statement starting so."""

    def __init__(self, url: str, statement: str) -> None:
        self._url = url.replace("postgresql+psycopg://", "postgresql://")
        self._statement = statement
        self.dropped = 0

    def __call__(self, conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.dropped or not statement.lstrip().startswith(self._statement):
            return
        self.dropped += 1
        pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with psycopg.connect(self._url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))


@pytest.fixture
def settings(tmp_path: Any, postgres_database: str) -> HubSettings:
    return HubSettings(data_dir=tmp_path / "hub-data", workers=1, database_url=postgres_database)


@pytest.fixture
def live(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    manifests: Callable[[], list[Manifest]],
) -> Iterator[tuple[Hub, Engine]]:
    app = create_app(settings, algorithms=resolver, manifests=manifests)
    with serving(app, settings) as client:
        yield Hub(client, settings), app.state.hub.engine


def _count(engine: Engine, query: Any) -> int:
    with Session(engine) as session:
        return int(session.scalar(query) or 0)


@pytest.mark.parametrize("statement", ["INSERT INTO tasks", "INSERT INTO audit_events"])
def test_a_task_created_while_the_connection_drops_is_created_once(
    live: tuple[Hub, Engine],
    token_a: str,
    study: tuple[str, list[Any]],
    statement: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub, engine = live
    study_uid, files = study
    stowed = hub.stow(token_a, files)
    assert stowed.status_code == 200, stowed.text
    sops = [s["00081155"]["Value"][0] for s in stowed.json()["00081199"]["Value"]]
    drop = DropConnection(hub.settings.database_url or "", statement)
    event.listen(engine, "before_cursor_execute", drop)
    client_task_id = uuid.uuid4().hex
    with caplog.at_level(logging.WARNING):
        created = hub.create_task(token_a, study_uid, sops, client_task_id=client_task_id)
    event.remove(engine, "before_cursor_execute", drop)

    assert drop.dropped == 1
    assert created.status_code == 201, created.text
    assert "retried" in caplog.text or "retrying" in caplog.text
    assert _count(engine, select(func.count()).where(Task.client_task_id == client_task_id)) == 1
    task_id = created.json()["id"]
    assert [e.task for e in audit_log(engine).events(action="task.created")] == [task_id]
    assert hub.wait_for_end(token_a, task_id, timeout=90)["state"] == "COMPLETED"
    assert audit_log(engine).verify() == []


@pytest.mark.parametrize(
    "statement",
    ["INSERT INTO instances", "INSERT INTO audit_pending"],
    ids=["before-the-objects-are-stored", "after-the-objects-are-stored"],
)
def test_a_stow_while_the_connection_drops_stores_every_instance_once(
    live: tuple[Hub, Engine], token_a: str, study: tuple[str, list[Any]], statement: str
) -> None:
    """Dropped at the first row, or at the request's event, once every object is in the store
    (the run again finds them there, not in staging, and still records each)."""
    hub, engine = live
    study_uid, files = study
    drop = DropConnection(hub.settings.database_url or "", statement)
    event.listen(engine, "before_cursor_execute", drop)
    stowed = hub.stow(token_a, files)
    event.remove(engine, "before_cursor_execute", drop)

    assert drop.dropped == 1
    assert stowed.status_code == 200, stowed.text
    assert "00081198" not in stowed.json()  # no Failed SOP Sequence
    assert len(stowed.json()["00081199"]["Value"]) == len(files)
    stored = select(func.count()).where(Instance.study_instance_uid == study_uid)
    assert _count(engine, stored) == len(files)
    retrieved = hub.client.get(f"/dicomweb/studies/{study_uid}", headers=hub.auth(token_a))
    assert retrieved.status_code == 200
    assert retrieved.content.count(b"DICM") == len(files)
    (received,) = audit_log(engine).events(action="stow.received")
    assert received.detail["stored"] == len(files)


def test_an_acknowledgement_while_the_connection_drops_is_recorded_once(
    live: tuple[Hub, Engine], token_a: str, study: tuple[str, list[Any]]
) -> None:
    hub, engine = live
    study_uid, files = study
    stowed = hub.stow(token_a, files)
    sops = [s["00081155"]["Value"][0] for s in stowed.json()["00081199"]["Value"]]
    task_id = hub.create_task(token_a, study_uid, sops).json()["id"]
    done = hub.wait_for_end(token_a, task_id, timeout=90)
    delivered = [r["sop_instance_uid"] for r in done["results"]]
    drop = DropConnection(hub.settings.database_url or "", "UPDATE tasks")
    event.listen(engine, "before_cursor_execute", drop)
    acked = hub.client.post(
        f"/tasks/{task_id}/acknowledge",
        json={"delivered_sop_instance_uids": delivered},
        headers=hub.auth(token_a),
    )
    event.remove(engine, "before_cursor_execute", drop)

    assert drop.dropped == 1
    assert acked.status_code == 200, acked.text
    assert acked.json()["acknowledged"] is True
    assert [e.task for e in audit_log(engine).events(action="task.acknowledged")] == [task_id]
    purged = select(func.count()).where(
        Instance.study_instance_uid == study_uid, Instance.purged_at.is_not(None)
    )
    assert _count(engine, purged) == len(files)  # the inputs deleted once delivered
