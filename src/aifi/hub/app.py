"""The hub's FastAPI application.

:func:`create_app` wires the parts once: database (migrated at start-up:
this is the embedded hub of ``aifi hub serve``), object store, worker pool,
routers. On start it registers the installed algorithms' manifests in the
catalog. The duties shared by all processes on one database -- re-queuing
every task a previous run left SCHEDULED or IN PROGRESS (so a killed hub
loses no work) and the retention purge -- are done only by the process that
holds :data:`START_UP_DUTIES` (:func:`aifi.hub.db.exclusive`): a second hub
started on the same database must not reset the tasks the first one runs.
Until tasks carry leases, run one ``aifi hub serve`` per database.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import ExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError

import aifi
from aifi.algorithms import registry
from aifi.algorithms.base import Algorithm, Manifest
from aifi.errors import StorageError
from aifi.hub.auth import declare_roles
from aifi.hub.catalog import sync_catalog
from aifi.hub.config import HubSettings
from aifi.hub.console import mount_console
from aifi.hub.db import engine_for, exclusive, is_transient, make_sessions, migrate, retrying
from aifi.hub.deps import HubContext
from aifi.hub.dispatcher import Dispatcher, ThreadPoolDispatcher
from aifi.hub.retention import Purger
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
)
from aifi.hub.runner import TaskRunner
from aifi.hub.storage import ObjectStore, open_store
from aifi.hub.tasks import recover_tasks

__all__ = ["START_UP_DUTIES", "create_app"]

logger = logging.getLogger(__name__)

START_UP_DUTIES = "aifi-hub:start-up-duties"
"""The lock one hub process holds to recover interrupted tasks and run the purge."""


def create_app(
    settings: HubSettings,
    *,
    algorithms: Callable[[str], Algorithm] | None = None,
    store: ObjectStore | None = None,
    dispatcher: Callable[[Callable[[str], None]], Dispatcher] | None = None,
    manifests: Callable[[], Sequence[Manifest]] | None = None,
) -> FastAPI:
    """The hub as an ASGI app; nothing touches disk or starts until its lifespan begins.

    ``algorithms`` resolves an algorithm id (default: the
    :func:`aifi.algorithms.registry.install` of ``settings.model_dir`` and
    ``settings.remote_algorithms_dir``, made when the lifespan begins),
    ``store`` holds objects (default: a folder in ``settings.data_dir``),
    ``dispatcher`` builds the task dispatcher around the task runner
    (default: a thread pool of ``settings.workers``), ``manifests`` lists what
    goes into the catalog (default: the installation's, or
    :func:`aifi.algorithms.registry.manifests` beside a custom ``algorithms``).
    Workers resolve through ``algorithms.runnable`` where it has one (an
    :class:`~aifi.algorithms.registry.Installation`), so a refused model's
    tasks are canceled with the reason.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if algorithms is None:
            installation = registry.install(settings.model_dir, settings.remote_algorithms_dir)
            resolve: Callable[[str], Algorithm] = installation
            installed = manifests or installation.manifests
        else:
            resolve = algorithms
            installed = manifests or registry.manifests
        run_resolve: Callable[[str], Algorithm] = getattr(resolve, "runnable", resolve)
        engine = engine_for(settings)
        migrate(engine)  # the embedded hub migrates; under a lock, so two at once are safe
        sessions = make_sessions(engine)
        objects = store or open_store(settings)
        objects.clear_staging()  # this process's staging, and long-abandoned ones only
        duties = ExitStack()
        sole = duties.enter_context(exclusive(engine, START_UP_DUTIES))
        runner = TaskRunner(sessions, objects, run_resolve)
        pool = (
            dispatcher(runner)
            if dispatcher is not None
            else ThreadPoolDispatcher(runner, settings.workers)
        )
        app.state.hub = HubContext(settings, engine, sessions, objects, pool, resolve)
        pool.start()
        with sessions() as session:
            sync_catalog(session, installed())
        purger = Purger(sessions, objects, settings)
        if sole:
            for task_id in retrying(sessions, recover_tasks):
                pool.submit(task_id)
            purger.start()
        else:
            logger.warning(
                "another hub process holds this database's start-up duties: this one neither "
                "re-queues interrupted tasks nor runs the retention purge (one 'aifi hub serve' "
                "per database until tasks are leased)"
            )
        logger.info("hub ready: data in %s", settings.data_dir)
        try:
            yield
        finally:
            purger.stop()
            pool.stop()
            duties.close()
            engine.dispose()
            logger.info("hub stopped")

    app = FastAPI(
        title="aifi hub",
        version=aifi.__version__,
        summary="National hub: runs contracted AI algorithms on pseudonymized studies.",
        lifespan=lifespan,
        docs_url=None,  # served with local assets by mount_console (no CDN)
        redoc_url=None,
    )
    for routes in (dicomweb, tasks, catalog, principals, subscriptions, audit, feedback, refusals):
        app.include_router(declare_roles(routes.router))
    app.include_router(health.router)
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
