"""What every request needs, as FastAPI dependencies with ``Annotated`` aliases.

The hub's running parts live in one :class:`HubContext` on ``app.state``,
built by :func:`aifi.hub.app.create_app`; routes receive them through the
aliases below and never import global state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

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


def get_context(request: Request) -> HubContext:
    context: HubContext = request.app.state.hub
    return context


ContextDep = Annotated[HubContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    with context.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
