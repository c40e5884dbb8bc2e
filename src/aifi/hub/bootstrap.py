"""The hub's one composition root: settings → engine, sessions, store, algorithms, queue.

Every process kind is built here from one :class:`~aifi.hub.config.HubSettings`:

========================  ==============================================================
``aifi hub serve``        embedded: migrates, API + :class:`WorkerPool` + :class:`Janitor`
``aifi hub api``          HTTP only; checks the schema, runs no algorithm, no duty
``aifi hub worker``       :func:`run_worker`: takes tasks of its queues, runs algorithms
``aifi hub janitor``      :func:`run_janitor`: lease reaper and retention, one active
``aifi hub migrate``      :func:`aifi.hub.db.migrate`, before the others start
========================  ==============================================================

:func:`open_hub` makes the shared parts (:class:`HubParts`); the app
(:func:`aifi.hub.app.create_app`), the workers and the janitor take them.
The audit trail lives in the same database and is reached through its
sessions (:func:`aifi.hub.auditing.audit_log_of`).
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from aifi.algorithms.base import Algorithm, Manifest
from aifi.errors import ConfigError
from aifi.hub.config import HubSettings
from aifi.hub.db import SessionFactory, engine_for, make_sessions, migrate, require_schema
from aifi.hub.storage import ObjectStore, open_store

if TYPE_CHECKING:
    from aifi.algorithms.registry import Installation
    from aifi.hub.dispatcher import WorkerPool
    from aifi.hub.executor import Executor
    from aifi.hub.janitor import Janitor
    from aifi.hub.queue import TaskQueue

__all__ = [
    "HubParts",
    "configure_process",
    "installation",
    "janitor_for",
    "open_hub",
    "run_janitor",
    "run_worker",
    "worker_pool",
]

logger = logging.getLogger(__name__)


def configure_process(settings: HubSettings) -> None:
    """What every hub process sets once: ONNX Runtime's execution providers."""
    from aifi.algorithms.onnx_model import use_providers

    use_providers(settings.onnx_providers)


@cache
def _installed(
    model_dir: Path | None, remote_dir: Path | None, plugins: tuple[str, ...]
) -> Installation:
    from aifi.algorithms.registry import Installation, Installed, install

    installed = install(model_dir, remote_dir)
    if not plugins:
        return installed
    entries = dict(installed.entries)
    for entry in plugins:
        algorithm = _plugin(entry)
        if algorithm.manifest.id in entries:
            raise ConfigError(
                f"algorithm plug-in {entry!r} has id {algorithm.manifest.id!r}, which this hub "
                "already installs; give it another id or remove it from 'algorithm_plugins'"
            )
        entries[algorithm.manifest.id] = Installed(algorithm, f"plug-in {entry}")
        logger.info(
            "algorithm %s %s from plug-in %s",
            algorithm.manifest.id,
            algorithm.manifest.version,
            entry,
        )
    return Installation(entries)


def _plugin(entry: str) -> Algorithm:
    """The algorithm ``"module:attribute"`` names (an instance, or a class that makes one)."""
    module_name, _, attribute = entry.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute or "ALGORITHM")
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"algorithm plug-in {entry!r} (setting 'algorithm_plugins') cannot be loaded: {exc}"
        ) from exc
    if isinstance(found, type):
        found = found()
    if not isinstance(found, Algorithm):
        raise ConfigError(
            f"algorithm plug-in {entry!r} is not an algorithm (a manifest and run(inputs))"
        )
    return found


def installation(settings: HubSettings) -> Installation:
    """The algorithms ``settings`` configure (built-in, model store, remote, plug-ins), once."""
    return _installed(
        settings.model_dir, settings.remote_algorithms_dir, tuple(settings.algorithm_plugins)
    )


@dataclass
class HubParts:
    """The parts one hub process shares between its API, workers and janitor.

    ``algorithms`` is what task creation and the catalog resolve;
    ``runnable`` what workers resolve (a refused model raises its reason);
    ``isolated`` whether workers may run algorithms in child processes made
    from the settings (False when algorithms were given as Python objects).
    """

    settings: HubSettings
    engine: Engine
    sessions: SessionFactory
    store: ObjectStore
    algorithms: Callable[[str], Algorithm]
    runnable: Callable[[str], Algorithm]
    manifests: Callable[[], Sequence[Manifest]]
    isolated: bool
    queue: TaskQueue = field(init=False)

    def __post_init__(self) -> None:
        from aifi.hub.queue import TaskQueue

        self.queue = TaskQueue(
            self.sessions,
            poll_s=self.settings.worker_poll_s,
            lease_s=self.settings.lease_s,
            outside=self.settings.outside_algorithms,
        )

    def sync_catalog(self) -> None:
        """Register the installed manifests; two processes starting at once both succeed."""
        from aifi.hub.catalog import sync_catalog

        for attempt in (1, 2):
            with self.sessions() as session:
                try:
                    sync_catalog(session, self.manifests())
                    return
                except IntegrityError:  # another process added the same row first
                    session.rollback()
                    if attempt == 2:
                        raise

    def close(self) -> None:
        self.engine.dispose()


def open_hub(
    settings: HubSettings,
    *,
    algorithms: Callable[[str], Algorithm] | None = None,
    manifests: Callable[[], Sequence[Manifest]] | None = None,
    store: ObjectStore | None = None,
    schema: str = "check",
) -> HubParts:
    """The hub's parts for ``settings``; ``schema`` ``"migrate"`` (embedded) or ``"check"``.

    ``algorithms`` replaces the configured installation (tests, code-made
    plug-ins); ``manifests`` lists the catalog (default: the installation's,
    or the registry's beside a custom ``algorithms``); ``store`` replaces
    the folder in ``settings.data_dir``.
    """
    from aifi.algorithms import registry

    configure_process(settings)
    if algorithms is None:
        installed = installation(settings)
        resolve: Callable[[str], Algorithm] = installed
        runnable: Callable[[str], Algorithm] = installed.runnable
        listed = manifests or installed.manifests
    else:
        resolve = algorithms
        runnable = getattr(algorithms, "runnable", algorithms)
        listed = manifests or registry.manifests
    engine = engine_for(settings)
    try:
        if schema == "migrate":
            migrate(engine)  # under a lock: two embedded hubs starting at once are safe
        else:
            require_schema(engine)
    except Exception:
        engine.dispose()
        raise
    return HubParts(
        settings=settings,
        engine=engine,
        sessions=make_sessions(engine),
        store=store or open_store(settings),
        algorithms=resolve,
        runnable=runnable,
        manifests=listed,
        isolated=algorithms is None and settings.worker_isolation == "process",
    )


def _executor(parts: HubParts) -> Executor:
    from aifi.hub.executor import ProcessExecutor, ThreadExecutor

    if parts.isolated:
        return ProcessExecutor(parts.settings)
    return ThreadExecutor(parts.runnable)


def worker_pool(
    parts: HubParts,
    slots: int,
    algorithm_ids: Collection[str] | None = None,
    *,
    warm: bool = False,
) -> WorkerPool:
    """``slots`` workers of this process for ``algorithm_ids`` (None: every algorithm)."""
    from aifi.hub.dispatcher import WorkerPool
    from aifi.hub.leases import worker_identity
    from aifi.hub.runner import TaskRunner

    def make_runner(stopping: threading.Event) -> TaskRunner:
        return TaskRunner(
            parts.sessions,
            parts.store,
            parts.runnable,
            _executor(parts),
            lease_s=parts.settings.lease_s,
            worker=worker_identity(),
            stopping=stopping,
        )

    return WorkerPool(parts.queue, make_runner, slots, algorithm_ids, warm=warm)


def janitor_for(parts: HubParts) -> Janitor:
    """The janitor of this process; re-queued tasks wake this process's workers."""
    from aifi.hub.janitor import Janitor

    def wake(task_ids: list[str]) -> None:
        for task_id in task_ids:
            parts.queue.put(task_id)

    return Janitor(parts.engine, parts.sessions, parts.store, parts.settings, wake)


def _until_signalled() -> threading.Event:
    """An event set by SIGTERM or SIGINT (the main thread's handlers)."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def run_worker(
    settings: HubSettings, queues: Collection[str] = (), slots: int | None = None
) -> None:
    """``aifi hub worker``: run the tasks of ``queues`` (all when empty) until signalled.

    ``slots`` tasks run at once (default ``settings.workers``), each in its
    own child process.
    """
    from aifi.errors import ConfigError
    from aifi.hub.queue import algorithms_for

    parts = open_hub(settings)
    try:
        ids = algorithms_for(parts.manifests(), queues)
        if not ids:
            known = sorted({m.resources.device for m in parts.manifests()})
            raise ConfigError(
                f"no installed algorithm is in queue(s) {', '.join(sorted(queues))}; "
                f"the queues are {', '.join(known)} or an algorithm id"
            )
        stop = _until_signalled()
        pool = worker_pool(parts, slots or settings.workers, ids, warm=True)
        pool.start()
        logger.info("worker ready: %s", ", ".join(sorted(ids)))
        stop.wait()
        pool.stop()
    finally:
        parts.close()


def run_janitor(settings: HubSettings) -> None:
    """``aifi hub janitor``: reap leases and apply retention until signalled (one active)."""
    parts = open_hub(settings)
    try:
        janitor = janitor_for(parts)
        stop = _until_signalled()
        janitor.start()
        logger.info("janitor started (active once it holds the lock)")
        stop.wait()
        janitor.stop()
    finally:
        parts.close()
