"""The janitor: the hub's periodic duties, done by exactly one process per database.

* the **lease reaper** (:func:`aifi.hub.leases.reap`) every
  ``janitor_interval_s``: a task whose worker died goes back to the queue —
  or is canceled after ``max_attempts`` runs — each audited;
* the **retention purge** (:func:`aifi.hub.retention.purge`) every
  ``purge_interval_s``;
* **sealing** (:func:`aifi.hub.auditing.seal_pending`) every
  ``janitor_interval_s``, and once as it becomes active: audit events a
  process committed with their change but died before sealing into their
  chain, appended in pending-id order, each exactly once.

Exactly one janitor is active: it holds :data:`JANITOR_LOCK` through
:func:`aifi.hub.db.exclusive` (a PostgreSQL session advisory lock, a
``flock`` beside the SQLite file), which the operating system or the
database releases when its process dies. Others stand by and try again
every ``janitor_interval_s``. ``aifi hub janitor`` runs one alone; the
embedded ``aifi hub serve`` runs one on a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from aifi.hub.auditing import seal_pending
from aifi.hub.config import HubSettings
from aifi.hub.db import SessionFactory, exclusive, retrying
from aifi.hub.leases import ReapReport, reap
from aifi.hub.retention import PurgeReport, purge
from aifi.hub.storage import ObjectStore

__all__ = ["JANITOR_LOCK", "Janitor", "reap_and_audit"]

logger = logging.getLogger(__name__)

JANITOR_LOCK = "aifi-hub:start-up-duties"
"""The lock the one active janitor holds (the name of the start-up duties it took over)."""


def reap_and_audit(session: Session, settings: HubSettings) -> ReapReport:
    """Reap expired leases; each task re-queued or canceled is audited with its change."""
    return reap(session, max_attempts=settings.max_attempts)


@dataclass
class _Due:
    interval_s: float
    next_at: float

    def now_due(self, now: float) -> bool:
        if now < self.next_at:
            return False
        self.next_at = now + self.interval_s
        return True


class Janitor:
    """Reaps leases and purges, on a thread, while it holds :data:`JANITOR_LOCK`.

    ``requeued`` is told the ids of tasks put back in the queue (the
    embedded hub wakes its workers with it).
    """

    def __init__(
        self,
        engine: Engine,
        sessions: SessionFactory,
        store: ObjectStore,
        settings: HubSettings,
        requeued: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._store = store
        self._settings = settings
        self._requeued = requeued
        self._stop = threading.Event()
        self.active = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="aifi-janitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)

    def reap_once(self) -> ReapReport:
        report = retrying(self._sessions, lambda s: reap_and_audit(s, self._settings))
        if report.requeued and self._requeued is not None:
            self._requeued(report.requeued)
        return report

    def seal_once(self) -> int:
        """Seal the audit events left pending; how many were sealed."""
        return seal_pending(self._engine)

    def purge_once(self) -> PurgeReport:
        # deleting twice is harmless, so a purge may run again from the start
        return retrying(self._sessions, lambda s: purge(s, self._store, self._settings))

    def _loop(self) -> None:
        interval = self._settings.janitor_interval_s
        while not self._stop.is_set():
            try:
                with exclusive(self._engine, JANITOR_LOCK) as held:
                    if held:
                        self._duties()
            except Exception:  # the database went away: stand by, try again
                logger.exception("janitor failed; trying again in %s s", interval)
            self.active.clear()
            self._stop.wait(interval)

    def _duties(self) -> None:
        logger.info("janitor active: sealing audit events, reaping leases, applying retention")
        self.active.set()
        now = time.monotonic()
        reaping = _Due(self._settings.janitor_interval_s, now)
        purging = _Due(self._settings.purge_interval_s, now + self._settings.purge_interval_s)
        while not self._stop.is_set():
            now = time.monotonic()
            if reaping.now_due(now):
                self._guarded("audit sealing", self.seal_once)
                self._guarded("lease reaper", self.reap_once)
            if purging.now_due(now):
                self._guarded("retention purge", self.purge_once)
            self._stop.wait(max(0.05, min(reaping.next_at, purging.next_at) - time.monotonic()))

    def _guarded(self, duty: str, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception:  # one failed round must not end the janitor; the next retries
            logger.exception("%s failed; trying again at its next round", duty)
