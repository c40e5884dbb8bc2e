"""Long polling of ``GET /tasks``: the edge waits at the hub until its listing changes.

An edge polls (hospitals accept no inbound connections). Rather than ask
every poll interval whether anything changed, it asks once with
``wait_s=N`` and ``If-None-Match`` set to the ``ETag`` of the listing it
holds (RFC 9110 §8.8.3, §13.1.2). The hub answers at once when the listing
changed, and otherwise waits, checking the listing's :func:`mark` every
:data:`CHECK_EVERY_S`, until it changes (200, the new listing and its
``ETag``) or ``N`` seconds passed (304 Not Modified: the edge's listing is
still right).

The mark is one aggregate over the poll index (``ix_tasks_poll``): per
state, how many of the hospital's listed tasks and their latest
``updated_at``. A task created, acknowledged, or moved to another state
changes it. It ignores paging (``limit``, ``after``): it covers every task
the filters select. Between two checks no connection is held.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from aifi.hub.db import SessionFactory
from aifi.hub.models import Task
from aifi.protocol.schemas import TaskState

__all__ = ["CHECK_EVERY_S", "MAX_WAIT_S", "mark", "seen_tag", "wait_for_change"]

CHECK_EVERY_S = 0.25
"""Seconds between two checks of a waiting poll: no later than an edge polling at 4/s."""

MAX_WAIT_S = 30.0
"""The longest ``wait_s`` the hub accepts (below the edge's default HTTP timeout)."""


def mark(
    session: Session,
    hospital_id: str,
    *,
    state: TaskState | None = None,
    acknowledged: bool | None = None,
) -> str:
    """The listing's entity tag: changes when a task it selects is added, removed or moved."""
    query = select(Task.state, func.count(), func.max(Task.updated_at)).where(
        Task.hospital_id == hospital_id
    )
    if acknowledged is not None:
        query = query.where(Task.acknowledged == acknowledged)
    if state is not None:
        query = query.where(Task.state == state.value)
    rows = sorted(
        (str(s), int(n), str(latest))
        for s, n, latest in session.execute(query.group_by(Task.state))
    )
    return '"' + hashlib.sha256(repr(rows).encode()).hexdigest()[:32] + '"'


async def wait_for_change(
    sessions: SessionFactory,
    hospital_id: str,
    seen: str,
    wait_s: float,
    *,
    state: TaskState | None = None,
    acknowledged: bool | None = None,
) -> bool:
    """Wait until the listing's mark differs from ``seen`` (True) or ``wait_s`` passed (False)."""

    def current() -> str:
        with sessions() as session:
            return mark(session, hospital_id, state=state, acknowledged=acknowledged)

    deadline = time.monotonic() + min(wait_s, MAX_WAIT_S)
    while True:
        if await run_in_threadpool(current) != seen:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(CHECK_EVERY_S, remaining))


def seen_tag(if_none_match: str | None) -> str | None:
    """The entity tag an ``If-None-Match`` header names (weak or strong, RFC 9110 §13.1.2)."""
    if not if_none_match or not if_none_match.strip():
        return None
    return if_none_match.split(",")[0].strip().removeprefix("W/")
