"""Long polling of ``GET /tasks``: the edge waits at the hub until its listing changes.

An edge polls (hospitals accept no inbound connections). Rather than ask
every poll interval whether anything changed, it asks once with
``wait_s=N`` and ``If-None-Match`` set to the ``ETag`` of the listing it
holds (RFC 9110 §8.8.3, §13.1.2). The hub answers at once when the listing
changed, and otherwise waits until it changes (200, the new listing and
its ``ETag``) or ``N`` seconds passed (304 Not Modified: the edge's listing
is still right).

The listing's :func:`mark` is one aggregate over the poll index
(``ix_tasks_poll``): per state, how many of the hospital's listed tasks and
their latest ``updated_at``. A task created, acknowledged, or moved to
another state changes it. It ignores paging (``limit``, ``after``): it
covers every task the filters select. One :class:`Watcher` per process
checks the marks of the waiting polls in one query: on PostgreSQL when a
notification says their hospital's tasks changed, on SQLite every
:data:`CHECK_EVERY_S`; between two checks no connection is held.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import defaultdict
from collections.abc import Collection
from typing import Any, TypeVar

from sqlalchemy import Engine, Select, func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from aifi.hub.db import SessionFactory, listen
from aifi.hub.models import Task
from aifi.protocol.schemas import TaskState

__all__ = [
    "CHANNEL",
    "CHECK_EVERY_S",
    "FALLBACK_CHECK_S",
    "MAX_WAIT_S",
    "Key",
    "Watcher",
    "mark",
    "marks",
    "seen_tag",
]

logger = logging.getLogger(__name__)

CHECK_EVERY_S = 0.25
"""Seconds between two checks of the waiting polls without notifications (SQLite)."""

FALLBACK_CHECK_S = 5.0
"""Seconds between two checks of every waiting poll while notifications arrive (PostgreSQL)."""

CHANNEL = "aifi_listings"
"""The PostgreSQL channel a hospital's id is sent on when its tasks change (migration 0013)."""

MAX_WAIT_S = 30.0
"""The longest ``wait_s`` the hub accepts (below the edge's default HTTP timeout)."""

Key = tuple[str, TaskState | None, bool | None]
"""What a waiting poll watches: the hospital and the listing's filters (state, acknowledged)."""


_Q = TypeVar("_Q", bound="Select[*tuple[Any, ...]]")


def _filtered(query: _Q, state: TaskState | None, acknowledged: bool | None) -> _Q:
    if acknowledged is not None:
        query = query.where(Task.acknowledged == acknowledged)
    if state is not None:
        query = query.where(Task.state == state.value)
    return query


def _digest(rows: list[tuple[str, int, str]]) -> str:
    return '"' + hashlib.sha256(repr(sorted(rows)).encode()).hexdigest()[:32] + '"'


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
    rows = session.execute(_filtered(query, state, acknowledged).group_by(Task.state))
    return _digest([(str(s), int(n), str(latest)) for s, n, latest in rows])


def marks(session: Session, keys: Collection[Key]) -> dict[Key, str]:
    """:func:`mark` of many listings, one query per combination of filters."""
    by_filters: dict[tuple[TaskState | None, bool | None], set[str]] = defaultdict(set)
    for hospital_id, state, acknowledged in keys:
        by_filters[(state, acknowledged)].add(hospital_id)
    found: dict[Key, str] = {}
    for (state, acknowledged), hospitals in by_filters.items():
        query = select(Task.hospital_id, Task.state, func.count(), func.max(Task.updated_at))
        query = _filtered(query.where(Task.hospital_id.in_(sorted(hospitals))), state, acknowledged)
        rows: dict[str, list[tuple[str, int, str]]] = {h: [] for h in hospitals}
        for hospital_id, s, n, latest in session.execute(
            query.group_by(Task.hospital_id, Task.state)
        ):
            rows[hospital_id].append((str(s), int(n), str(latest)))
        for hospital_id, listed in rows.items():
            found[(hospital_id, state, acknowledged)] = _digest(listed)
    return found


class Watcher:
    """Checks all the polls waiting in this process, one query per check.

    Each waiting poll registers what it watches and the mark it holds; a
    check (:func:`marks`) wakes those whose mark moved. On PostgreSQL the
    watcher listens for ``NOTIFY`` :data:`CHANNEL` (sent by a trigger on
    ``tasks``, migration 0013, with the hospital's id when its tasks change)
    and checks only the polls of the hospitals notified, at once; a check of
    every poll runs every :data:`FALLBACK_CHECK_S` in case a notification
    was lost. Without notifications (SQLite, or while the listener
    reconnects) every poll is checked every :data:`CHECK_EVERY_S`. No poll
    waiting, no query. :meth:`close` stops the listener.
    """

    def __init__(self, sessions: SessionFactory) -> None:
        self.sessions = sessions
        self._waiting: dict[Key, list[tuple[str, asyncio.Future[bool]]]] = {}
        self._checking: asyncio.Task[None] | None = None
        self._listener: threading.Thread | None = None
        self._deaf = threading.Event()
        self._listening = False  # True while notifications arrive (set by the listener)
        self._poked: set[str] = set()  # hospitals notified since the last check
        self._poked_all = False
        self._poke: asyncio.Event | None = None

    async def wait(self, key: Key, seen: str, wait_s: float) -> bool:
        """True once ``key``'s mark differs from ``seen`` (at once if it does); False after."""
        self._start_listening()
        woken: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (seen, woken)
        self._waiting.setdefault(key, []).append(entry)  # before the first look: no poke missed
        try:
            if (await run_in_threadpool(self._marks, [key]))[key] != seen:
                return True
            if self._checking is None or self._checking.done():
                self._checking = asyncio.create_task(self._check())
            return await asyncio.wait_for(woken, min(wait_s, MAX_WAIT_S))
        except TimeoutError:
            return False
        finally:
            waiters = self._waiting.get(key, [])
            if entry in waiters:
                waiters.remove(entry)
            if not waiters:
                self._waiting.pop(key, None)

    def close(self) -> None:
        """Stop listening for notifications (the app's shutdown)."""
        listener, self._listener = self._listener, None
        self._deaf.set()
        if listener is not None:
            listener.join(5)

    def _start_listening(self) -> None:
        if self._listener is not None or self._deaf.is_set():
            return
        with self.sessions() as session:
            engine = session.get_bind()
        if not isinstance(engine, Engine) or engine.dialect.name != "postgresql":
            self._deaf.set()  # nothing to listen to: checks on the timer
            return
        loop = asyncio.get_running_loop()
        self._poke = asyncio.Event()

        def notified(hospital_id: str | None) -> None:
            self._listening = True
            loop.call_soon_threadsafe(self._poked_by, hospital_id)

        def lost() -> None:
            self._listening = False  # the timer's checks until notifications arrive again

        def run() -> None:
            try:
                listen(engine, CHANNEL, notified, self._deaf, retry_s=CHECK_EVERY_S, lost=lost)
            finally:
                lost()

        self._listener = threading.Thread(target=run, name="aifi-listing-listener", daemon=True)
        self._listener.start()

    def _poked_by(self, hospital_id: str | None) -> None:
        if hospital_id is None:  # (re)connected: what changed meanwhile is unknown
            self._poked_all = True
        else:
            self._poked.add(hospital_id)
        if self._poke is not None:
            self._poke.set()

    def _marks(self, keys: Collection[Key]) -> dict[Key, str]:
        with self.sessions() as session:
            return marks(session, keys)

    async def _next_check(self) -> list[Key]:
        """Wait for a notification or the timer; the waiting polls to check now."""
        poke = self._poke
        if poke is None or not self._listening:
            await asyncio.sleep(CHECK_EVERY_S)
            return list(self._waiting)
        try:
            await asyncio.wait_for(poke.wait(), FALLBACK_CHECK_S)
        except TimeoutError:
            return list(self._waiting)
        poke.clear()
        poked, everyone = self._poked, self._poked_all
        self._poked, self._poked_all = set(), False
        return [key for key in self._waiting if everyone or key[0] in poked]

    async def _check(self) -> None:
        while self._waiting:
            keys = await self._next_check()
            if not keys:
                continue
            try:
                now = await run_in_threadpool(self._marks, keys)
            except Exception:  # the database is away: each poll asks again and hears why
                logger.warning("long poll check failed; answering the waiting polls", exc_info=True)
                now = {}
            for key in keys:
                for seen, woken in self._waiting.get(key, []):
                    if now.get(key) != seen and not woken.done():
                        woken.set_result(True)


def seen_tag(if_none_match: str | None) -> str | None:
    """The entity tag an ``If-None-Match`` header names (weak or strong, RFC 9110 §13.1.2)."""
    if not if_none_match or not if_none_match.strip():
        return None
    return if_none_match.split(",")[0].strip().removeprefix("W/")
