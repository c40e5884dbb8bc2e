"""Crash safety: tasks left SCHEDULED or IN PROGRESS run when the hub starts again."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import update

from aifi.algorithms.base import Algorithm
from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions
from aifi.hub.models import Task
from aifi.hub.runner import TaskRunner
from aifi.hub.storage import LocalFolderStore
from aifi.protocol.schemas import TaskState

from .conftest import Hub, serving


class Holding:
    """A dispatcher whose workers never come: tasks stay where a killed hub left them."""

    def __init__(self, run: Callable[[str], None]) -> None:
        self.submitted: list[str] = []

    def submit(self, task_id: str) -> None:
        self.submitted.append(task_id)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _set_state(settings: HubSettings, task_id: str, state: TaskState) -> None:
    engine = make_engine(settings.effective_database_url)
    try:
        with make_sessions(engine)() as session:
            session.execute(update(Task).where(Task.id == task_id).values(state=state.value))
            session.commit()
    finally:
        engine.dispose()


def test_interrupted_tasks_run_after_a_restart(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    token_a: str,
    study: tuple[str, list[Path]],
) -> None:
    study_uid, files = study
    sops = [f.stem for f in files]
    with serving(create_app(settings, algorithms=resolver, dispatcher=Holding), settings) as client:
        first = Hub(client, settings)
        assert first.stow(token_a, files).status_code == 200
        scheduled = first.create_task(token_a, study_uid, sops).json()
        interrupted = first.create_task(token_a, study_uid, sops).json()
    _set_state(settings, interrupted["id"], TaskState.IN_PROGRESS)
    assert scheduled["state"] == TaskState.SCHEDULED

    with serving(create_app(settings, algorithms=resolver), settings) as client:
        second = Hub(client, settings)
        for task in (scheduled, interrupted):
            ended = second.wait_for_end(token_a, task["id"])
            assert ended["state"] == TaskState.COMPLETED, ended["reason"]
            assert len(ended["results"]) == 1


def test_a_task_submitted_twice_runs_once(
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

    engine = make_engine(settings.effective_database_url)
    sessions = make_sessions(engine)
    runner = TaskRunner(sessions, LocalFolderStore(settings.data_dir), resolver)
    workers = [threading.Thread(target=runner, args=(task_id,)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    with sessions() as session:
        task = session.get(Task, task_id)
        assert task is not None
        assert task.state == TaskState.COMPLETED
        assert len(task.results) == 1
    engine.dispose()
