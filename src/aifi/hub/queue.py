"""The job queue: the ``tasks`` table itself, read by workers through leases.

There is no second store of jobs (docs/queue.md says why not procrastinate):
a task created SCHEDULED *is* queued, in the same transaction; a worker takes
the oldest SCHEDULED task of the algorithms it serves with one atomic claim
(:func:`aifi.hub.leases.claim_next`, ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL). Queues are named by resource class — ``cpu``, ``gpu``, the
``resources.device`` of an algorithm's manifest — or by an algorithm's id:
``aifi hub worker --queue gpu`` serves the GPU algorithms it has installed.
What is queued is plain SQL for an operator::

    SELECT algorithm_id, state, count(*) FROM tasks
    WHERE state IN ('SCHEDULED', 'IN PROGRESS') GROUP BY 1, 2;

:class:`TaskQueue` adds what is better than polling: a task put by this
process (the embedded hub's API, the janitor's re-queue) wakes this
process's idle workers at once. On PostgreSQL a put also sends
``NOTIFY aifi_tasks`` (payload: the task id), and the workers of every
``aifi hub worker`` process ``LISTEN`` on one connection of their own
(:meth:`TaskQueue.listen`), so a task the ``aifi hub api`` process created
wakes them at once too. The poll (``worker_poll_s``) stays as the fallback
for a lost notification or a listener reconnecting, and can be slow: an
idle worker polling every 50 ms cost about 37 ms of CPU per second
(bench/README.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from aifi.algorithms.base import Manifest
from aifi.hub.db import SessionFactory, listen, retrying
from aifi.hub.leases import claim_next

__all__ = ["CHANNEL", "TaskQueue", "algorithms_for", "queue_of"]

logger = logging.getLogger(__name__)

CHANNEL = "aifi_tasks"
"""The PostgreSQL notification channel of newly SCHEDULED tasks (payload: the task id)."""


def queue_of(manifest: Manifest) -> str:
    """The queue an algorithm's tasks go to: its resource class (``cpu`` or ``gpu``)."""
    return manifest.resources.device


def algorithms_for(manifests: Iterable[Manifest], queues: Collection[str]) -> set[str]:
    """The ids of the algorithms a worker serving ``queues`` runs (all when ``queues`` is empty).

    A queue name is a resource class (``cpu``, ``gpu``) or an algorithm id.
    """
    chosen = set()
    for manifest in manifests:
        if not queues or queue_of(manifest) in queues or manifest.id in queues:
            chosen.add(manifest.id)
    return chosen


class TaskQueue:
    """Take tasks from the database for this process's workers; wake them when one is put."""

    def __init__(
        self,
        sessions: SessionFactory,
        *,
        poll_s: float,
        lease_s: float,
        outside: Collection[str] = (),
    ) -> None:
        self._sessions = sessions
        self._poll_s = poll_s
        self._lease_s = lease_s
        self._outside = frozenset(outside)  # performed by outside performers, never taken here
        self._changed = threading.Condition()
        self._generation = 0
        self._postgresql: bool | None = None
        self._listener: threading.Thread | None = None
        self._deaf = threading.Event()  # set: the listener stops

    def put(self, task_id: str) -> None:
        """A task became SCHEDULED (it is in the database already): wake the idle workers.

        On PostgreSQL the workers of other processes are woken too (``NOTIFY``);
        a notification that cannot be sent is left to their poll.
        """
        logger.debug("task %s queued", task_id)
        self.wake()
        if not self._is_postgresql():
            return
        try:
            with self._sessions() as session:
                session.execute(
                    text("SELECT pg_notify(:channel, :task)"), {"channel": CHANNEL, "task": task_id}
                )
                session.commit()
        except SQLAlchemyError as exc:
            logger.debug("task %s: no notification sent (%s); workers poll", task_id, exc)

    def _is_postgresql(self) -> bool:
        if self._postgresql is None:
            with self._sessions() as session:
                self._postgresql = session.get_bind().dialect.name == "postgresql"
        return self._postgresql

    def listen(self) -> None:
        """Wake this process's workers on every task put by any process (PostgreSQL only)."""
        if self._listener is not None or not self._is_postgresql():
            return
        self._deaf.clear()
        self._listener = threading.Thread(
            target=self._listen, name="aifi-queue-listener", daemon=True
        )
        self._listener.start()

    def stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        self._deaf.set()
        if listener is not None:
            listener.join(5)

    def _listen(self) -> None:
        """LISTEN on a connection of its own (out of the pool); reconnect after a failure."""
        with self._sessions() as session:
            engine = session.get_bind()
        assert isinstance(engine, Engine)
        listen(engine, CHANNEL, lambda _task: self.wake(), self._deaf, retry_s=self._poll_s)

    def wake(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def take(
        self,
        worker: str,
        algorithm_ids: Collection[str] | None,
        stop: threading.Event,
    ) -> str | None:
        """Claim the next task for ``worker`` (waiting for one); None once ``stop`` is set.

        ``algorithm_ids`` None: any algorithm (the embedded hub, where every
        installed algorithm runs in this process).
        """
        while not stop.is_set():
            with self._changed:
                seen = self._generation
            try:
                task_id = retrying(
                    self._sessions,
                    lambda session: claim_next(
                        session, worker, algorithm_ids, self._lease_s, exclude=self._outside
                    ),
                )
            except Exception:  # the database is away: wait, try again
                logger.exception("could not look for a task; retrying in %s s", self._poll_s)
                task_id = None
            if task_id is not None:
                return task_id
            with self._changed:
                if self._generation == seen and not stop.is_set():
                    self._changed.wait(self._poll_s)
        return None
