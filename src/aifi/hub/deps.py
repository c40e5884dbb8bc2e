"""What every request needs, as FastAPI dependencies with ``Annotated`` aliases.

The hub's running parts live in one :class:`HubContext` on ``app.state``,
built by :func:`aifi.hub.app.create_app`; routes receive them through the
aliases below and never import global state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from aifi.algorithms.base import Algorithm
from aifi.hub.config import HubSettings
from aifi.hub.db import SessionFactory
from aifi.hub.dispatcher import Dispatcher
from aifi.hub.storage import ObjectStore

__all__ = ["ContextDep", "HubContext", "SessionDep", "get_context", "get_session"]


@dataclass
class HubContext:
    """The hub's parts, shared by all requests and workers."""

    settings: HubSettings
    engine: Engine
    sessions: SessionFactory
    store: ObjectStore
    dispatcher: Dispatcher
    algorithms: Callable[[str], Algorithm]


async def get_context(request: Request) -> HubContext:
    """The hub's parts (``async``: FastAPI runs a plain ``def`` dependency on a pool thread)."""
    context: HubContext = request.app.state.hub
    return context


ContextDep = Annotated[HubContext, Depends(get_context)]


async def get_session(context: ContextDep) -> AsyncIterator[Session]:
    """A session for the request, closed after it.

    Made on the event loop: a new session holds no connection, and each
    dependency written as a plain ``def`` would cost a hop to a pool thread
    and back (about a tenth of a millisecond of CPU each, several per
    request; bench/national_load.py --per-call). Closing a session the route
    left in a transaction talks to the database (ROLLBACK), so that is done
    on a pool thread.
    """
    session = context.sessions()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]
