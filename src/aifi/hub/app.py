"""The hub's FastAPI application.

:func:`create_app` serves the routers over the parts
:func:`aifi.hub.bootstrap.open_hub` makes when the lifespan begins. Which
duties the process does besides HTTP is its ``role``:

* ``"embedded"`` (``aifi hub serve``, the demo, tests): migrates the
  database, registers the installed algorithms in the catalog, runs a
  :class:`~aifi.hub.dispatcher.WorkerPool` of ``settings.workers`` slots and a
  :class:`~aifi.hub.janitor.Janitor` (active in one process per database);
* ``"api"`` (``aifi hub api``, any number of replicas, each with any number
  of uvicorn workers): checks the schema is current, registers the catalog,
  and nothing else — no migration, no recovery, no purge, no algorithm. Its
  tasks are run by ``aifi hub worker`` processes that take them from the
  database.

A task the API creates is committed SCHEDULED, which queues it
(:mod:`aifi.hub.queue`); a worker claims it with a lease
(:mod:`aifi.hub.leases`); the janitor re-queues a task whose worker died.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError

import aifi
from aifi.algorithms.base import Algorithm, Manifest
from aifi.errors import StorageError
from aifi.hub.auth import declare_roles
from aifi.hub.bootstrap import janitor_for, open_hub, worker_pool
from aifi.hub.config import HubSettings
from aifi.hub.console import mount_console
from aifi.hub.db import is_transient
from aifi.hub.deps import HubContext
from aifi.hub.dispatcher import Dispatcher, ElsewhereWorkers
from aifi.hub.janitor import JANITOR_LOCK
from aifi.hub.polling import Watcher
from aifi.hub.routes import (
    audit,
    catalog,
    dicomweb,
    feedback,
    health,
    principals,
    refusals,
    subscriptions,
    tasks,
    workitems,
)
from aifi.hub.runner import TaskRunner
from aifi.hub.storage import ObjectStore

__all__ = ["START_UP_DUTIES", "Role", "create_app"]

logger = logging.getLogger(__name__)

START_UP_DUTIES = JANITOR_LOCK
"""The lock of the one active janitor (it took over the duties start-up used to do)."""

Role = Literal["embedded", "api"]


def create_app(
    settings: HubSettings,
    *,
    algorithms: Callable[[str], Algorithm] | None = None,
    store: ObjectStore | None = None,
    dispatcher: Callable[[TaskRunner], Dispatcher] | None = None,
    manifests: Callable[[], Sequence[Manifest]] | None = None,
    role: Role = "embedded",
) -> FastAPI:
    """The hub as an ASGI app; nothing touches disk or starts until its lifespan begins.

    ``algorithms`` resolves an algorithm id (default: the configured
    installation, :func:`aifi.hub.bootstrap.installation`; workers then run
    algorithms in child processes, so a time limit can end them), ``store``
    holds objects (default: a folder in ``settings.data_dir``),
    ``dispatcher`` replaces the embedded worker pool (it is given a
    :class:`~aifi.hub.runner.TaskRunner`), ``manifests`` lists what goes into
    the catalog. ``role`` is ``"embedded"`` or ``"api"`` (module docstring).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        embedded = role == "embedded"
        parts = open_hub(
            settings,
            algorithms=algorithms,
            manifests=manifests,
            store=store,
            schema="migrate" if embedded else "check",
        )
        parts.store.clear_staging()  # this process's staging, and long-abandoned ones only
        parts.sync_catalog()
        pool: Dispatcher
        if not embedded:
            pool = ElsewhereWorkers(parts.queue)  # notifies workers on PostgreSQL
        elif dispatcher is not None:
            pool = dispatcher(
                TaskRunner(parts.sessions, parts.store, parts.runnable, lease_s=settings.lease_s)
            )
        else:
            pool = worker_pool(parts, settings.workers)
        janitor = janitor_for(parts) if embedded else None
        app.state.hub = HubContext(
            settings, parts.engine, parts.sessions, parts.store, pool, parts.algorithms
        )
        app.state.task_watcher = Watcher(parts.sessions)  # the long polls of GET /tasks
        pool.start()
        if janitor is not None:
            janitor.start()
        logger.info("hub %s ready: data in %s", role, settings.data_dir)
        try:
            yield
        finally:
            if janitor is not None:
                janitor.stop()
            app.state.task_watcher.close()
            pool.stop()
            parts.close()
            logger.info("hub stopped")

    app = FastAPI(
        title="aifi hub",
        version=aifi.__version__,
        summary="National hub: runs contracted AI algorithms on pseudonymized studies.",
        lifespan=lifespan,
        docs_url=None,  # served with local assets by mount_console (no CDN)
        redoc_url=None,
    )
    for routes in (
        dicomweb,
        tasks,
        workitems,
        catalog,
        principals,
        subscriptions,
        audit,
        feedback,
        refusals,
    ):
        app.include_router(declare_roles(routes.router))
    app.include_router(health.router)
    app.include_router(workitems.events_router)  # UPS-RS event reports (WebSocket)
    mount_console(app)
    app.add_exception_handler(StorageError, _storage_failed)
    app.add_exception_handler(DataError, _unstorable_value)
    app.add_exception_handler(DBAPIError, _database_failed)
    return app


async def _database_failed(request: Request, exc: Exception) -> JSONResponse:
    """A transient database failure (lost connection, serialization) asks the client to retry."""
    if not is_transient(exc):
        raise exc
    logger.warning("transient database failure on %s: %s", request.url.path, exc)
    return JSONResponse(
        {"detail": "the hub's database is briefly unavailable; retry later"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def _unstorable_value(request: Request, exc: Exception) -> JSONResponse:
    """A value the database refuses (SQLSTATE class 22: a NUL character, a number too large)."""
    reason = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
    logger.warning("refused a value the database cannot hold on %s: %s", request.url.path, reason)
    return JSONResponse(
        {
            "detail": "the request holds a value the hub cannot store or search for "
            "(a NUL character or a number out of range)"
        },
        status_code=422,
    )


async def _storage_failed(request: Request, exc: Exception) -> JSONResponse:
    logger.error("storage failure on %s: %s", request.url.path, exc)
    return JSONResponse(
        {"detail": "the hub's storage failed; retry later"},
        status_code=503,
        headers={"Retry-After": "30"},
    )
