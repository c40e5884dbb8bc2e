"""Leases: a task is claimed once, a dead worker's task runs again once, a hang is ended.

Runs on SQLite and PostgreSQL (the ``settings`` fixture). Tasks are made
through the real API with a dispatcher that never runs them, then claimed,
reaped and run the way workers and the janitor do.
"""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from aifi.algorithms import registry
from aifi.algorithms.base import Algorithm, AlgorithmInput, Findings
from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import SessionFactory, engine_for, make_sessions
from aifi.hub.leases import claim, claim_next, fence, reap
from aifi.hub.models import Result, Task, utcnow
from aifi.hub.runner import TaskRunner
from aifi.hub.storage import LocalFolderStore
from aifi.protocol.schemas import TaskState

from .conftest import Hub, register, serving
from .plugin_algorithms import HANG_LIMIT_S
from .test_recovery import Holding

ELSEWHERE = "other-host:4242:worker-dead"  # a worker on another machine: only its lease counts


@pytest.fixture
def sessions(settings: HubSettings) -> Iterator[SessionFactory]:
    engine = engine_for(settings)
    yield make_sessions(engine)
    engine.dispose()


def _scheduled_tasks(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    token: str,
    study: tuple[str, list[Path]],
    count: int,
) -> list[str]:
    study_uid, files = study
    with serving(create_app(settings, algorithms=resolver, dispatcher=Holding), settings) as client:
        hub = Hub(client, settings)
        assert hub.stow(token, files).status_code == 200
        return [
            hub.create_task(token, study_uid, [f.stem for f in files]).json()["id"]
            for _ in range(count)
        ]


def test_concurrent_workers_claim_every_task_exactly_once(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    token_a: str,
    study: tuple[str, list[Path]],
) -> None:
    created = _scheduled_tasks(settings, resolver, token_a, study, 8)
    claims: list[tuple[str, str]] = []
    start = threading.Barrier(4)

    def worker(name: str) -> None:
        engine = engine_for(settings)  # a process of its own, as far as the database can tell
        sessions = make_sessions(engine)
        start.wait()
        try:
            while True:
                with sessions() as session:
                    task_id = claim_next(session, name, None, lease_s=60)
                if task_id is None:
                    return
                claims.append((task_id, name))
        finally:
            engine.dispose()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(task_id for task_id, _ in claims) == sorted(created)


def test_a_dead_workers_task_is_run_again_once_by_another_worker(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    sessions: SessionFactory,
    token_a: str,
    study: tuple[str, list[Path]],
) -> None:
    (task_id,) = _scheduled_tasks(settings, resolver, token_a, study, 1)
    with sessions() as session:
        assert claim(session, task_id, ELSEWHERE, lease_s=30)
        assert not claim(session, task_id, "another", lease_s=30)  # delivered twice: runs once
        assert reap(session, max_attempts=3).requeued == []  # the lease still runs
        later = utcnow() + timedelta(seconds=31)
        assert reap(session, max_attempts=3, now=later).requeued == [task_id]

    runner = TaskRunner(sessions, LocalFolderStore(settings.data_dir), resolver)
    runner(task_id)
    runner(task_id)  # the queue delivers it again: nothing happens

    with sessions() as session:
        task = session.get(Task, task_id)
        assert task is not None
        assert task.state == TaskState.COMPLETED, task.reason
        assert task.attempts == 2
        assert task.claimed_by == runner.worker
        assert len(task.results) == 1
        assert not fence(session, task_id, ELSEWHERE)  # the dead worker can commit nothing


class _LosesItsLease:
    """Runs the integrity check, but meanwhile the janitor gives the task to another worker."""

    def __init__(self, sessions: SessionFactory) -> None:
        self.manifest = registry.get("integrity-check").manifest
        self._sessions = sessions
        self.task_id = ""

    def run(self, inputs: AlgorithmInput) -> Findings:
        with self._sessions() as session:
            reap(session, max_attempts=3, now=utcnow() + timedelta(hours=1))
            assert claim(session, self.task_id, "the-other-worker", lease_s=60)
        return registry.get("integrity-check").run(inputs)


def test_a_worker_that_lost_its_lease_commits_no_results(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    sessions: SessionFactory,
    token_a: str,
    study: tuple[str, list[Path]],
) -> None:
    (task_id,) = _scheduled_tasks(settings, resolver, token_a, study, 1)
    algorithm = _LosesItsLease(sessions)
    algorithm.task_id = task_id
    store = LocalFolderStore(settings.data_dir)
    TaskRunner(sessions, store, lambda _: algorithm)(task_id)

    with sessions() as session:
        task = session.get(Task, task_id)
        assert task is not None
        assert task.state == TaskState.IN_PROGRESS
        assert task.claimed_by == "the-other-worker"
        assert session.scalars(select(Result).where(Result.task_id == task_id)).all() == []
    assert not list((settings.data_dir / "results").rglob("*.dcm"))  # its objects deleted


def test_a_task_whose_workers_keep_dying_is_canceled_with_the_reason(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    sessions: SessionFactory,
    token_a: str,
    study: tuple[str, list[Path]],
) -> None:
    (task_id,) = _scheduled_tasks(settings, resolver, token_a, study, 1)
    later = utcnow() + timedelta(hours=1)
    with sessions() as session:
        for _ in range(2):
            assert claim(session, task_id, ELSEWHERE, lease_s=1)
            assert reap(session, max_attempts=3, now=later).requeued == [task_id]
            later += timedelta(hours=1)
        assert claim(session, task_id, ELSEWHERE, lease_s=1)
        assert reap(session, max_attempts=3, now=later).canceled == [task_id]
        task = session.get(Task, task_id)
        assert task is not None
        assert task.state == TaskState.CANCELED
        assert "stopped before finishing 3 times" in (task.reason or "")


def test_a_worker_gone_from_this_machine_loses_its_lease_at_once(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    sessions: SessionFactory,
    token_a: str,
    study: tuple[str, list[Path]],
) -> None:
    (task_id,) = _scheduled_tasks(settings, resolver, token_a, study, 1)
    ended = subprocess.run(["true"], check=True)
    assert ended.returncode == 0
    gone = subprocess.Popen(["true"])
    gone.wait()
    with sessions() as session:
        assert claim(session, task_id, f"{socket.gethostname()}:{gone.pid}:w", lease_s=3600)
        assert reap(session, max_attempts=3).requeued == [task_id]


@pytest.mark.slow
def test_a_hanging_algorithm_is_ended_at_its_time_limit(
    tmp_path: Path, database_url: str | None, study: tuple[str, list[Path]]
) -> None:
    settings = HubSettings(
        data_dir=tmp_path / "hub-data",
        database_url=database_url,
        workers=1,
        algorithm_plugins=("hub.plugin_algorithms:Hanging",),
    )
    assert settings.worker_isolation == "process"
    study_uid, files = study
    sops = [f.stem for f in files]
    with serving(create_app(settings), settings) as client:
        hub = Hub(client, settings)
        token = register(settings, "Hospital H", ("integrity-check", "test-hang"))
        assert hub.stow(token, files).status_code == 200
        hanging = hub.create_task(token, study_uid, sops, algorithm="test-hang").json()
        after = hub.create_task(token, study_uid, sops).json()

        deadline = time.monotonic() + 60
        hung: list[int] = []
        while not hung:  # the child process running the hanging algorithm
            hung = [
                p.pid
                for p in multiprocessing.active_children()
                if p.name == "aifi-algorithm" and p.pid is not None
            ]
            assert time.monotonic() < deadline, "no algorithm process was started"
            time.sleep(0.05)
        ended = hub.wait_for_end(token, hanging["id"], timeout=120)
        assert ended["state"] == TaskState.CANCELED
        assert ended["reason"] == f"time limit of {HANG_LIMIT_S:g} s exceeded"
        assert ended["results"] == []
        # the hung process is ended (the next task may already run in a fresh one)
        deadline = time.monotonic() + 10
        while any(p.pid in hung and p.is_alive() for p in multiprocessing.active_children()):
            assert time.monotonic() < deadline, f"algorithm process {hung} still alive"
            time.sleep(0.05)
        # the slot goes on with a fresh child process
        done = hub.wait_for_end(token, after["id"], timeout=120)
        assert done["state"] == TaskState.COMPLETED, done["reason"]
