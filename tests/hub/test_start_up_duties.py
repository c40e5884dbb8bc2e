"""Start-up does no destructive shared work: a second hub on one database leaves the first be.

Runs on SQLite and PostgreSQL (the ``settings`` fixture). Until tasks carry
leases only the process holding the start-up duties lock re-queues
interrupted tasks and runs the purge; every process stages uploads in a
folder of its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import update

from aifi.algorithms.base import Algorithm
from aifi.hub.app import START_UP_DUTIES, create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import engine_for, exclusive, make_sessions
from aifi.hub.models import Task
from aifi.hub.storage import STALE_STAGING_S, LocalFolderStore
from aifi.protocol.schemas import TaskState

from .conftest import Hub, serving
from .test_recovery import Holding


def test_only_one_process_holds_a_duty_at_a_time(settings: HubSettings) -> None:
    first, second = engine_for(settings), engine_for(settings)
    try:
        with (
            exclusive(first, START_UP_DUTIES) as held,
            exclusive(second, START_UP_DUTIES) as also,
        ):
            assert held and not also
        with exclusive(second, START_UP_DUTIES) as later:
            assert later  # released when the holder stopped
    finally:
        first.dispose()
        second.dispose()


def test_a_second_hub_does_not_reset_a_task_the_first_one_runs(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    token_a: str,
    study: tuple[str, list[Path]],
) -> None:
    study_uid, files = study
    with serving(create_app(settings, algorithms=resolver, dispatcher=Holding), settings) as client:
        hub = Hub(client, settings)
        assert hub.stow(token_a, files).status_code == 200
        task_id = hub.create_task(token_a, study_uid, [f.stem for f in files]).json()["id"]
    engine = engine_for(settings)
    try:
        with make_sessions(engine)() as session:  # as a first, live hub runs it
            session.execute(
                update(Task).where(Task.id == task_id).values(state=TaskState.IN_PROGRESS.value)
            )
            session.commit()
        with (
            exclusive(engine, START_UP_DUTIES) as first_hub_alive,
            serving(create_app(settings, algorithms=resolver), settings) as client,
        ):
            assert first_hub_alive
            time.sleep(0.3)
            task = Hub(client, settings).client.get(f"/tasks/{task_id}", headers=Hub.auth(token_a))
            assert task.json()["state"] == TaskState.IN_PROGRESS  # not reset, not run twice
    finally:
        engine.dispose()

    with serving(create_app(settings, algorithms=resolver), settings) as client:
        ended = Hub(client, settings).wait_for_end(token_a, task_id)  # the first hub died
    assert ended["state"] == TaskState.COMPLETED, ended["reason"]
    assert len(ended["results"]) == 1


def test_starting_a_hub_keeps_the_uploads_another_process_is_staging(tmp_path: Path) -> None:
    """No database: the staging folders of the local object store."""
    receiving = LocalFolderStore(tmp_path / "hub-data")
    handle, staged = receiving.new_temporary()
    with handle:
        handle.write(b"half of an upload")
    abandoned = receiving.staging_root / "gone-host-1-deadbeef"
    abandoned.mkdir()
    (abandoned / "x.part").write_bytes(b"left by a crash")
    long_ago = time.time() - STALE_STAGING_S - 60
    os.utime(abandoned, (long_ago, long_ago))

    LocalFolderStore(tmp_path / "hub-data").clear_staging()  # a second process starts

    assert staged.read_bytes() == b"half of an upload"
    assert not abandoned.exists()
    assert receiving.put(staged, "instances/x.dcm") == len(b"half of an upload")
