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

:class:`TaskQueue` adds what one process can do better than polling: a task
put by this process (the embedded hub's API, the janitor's re-queue) wakes
this process's idle workers at once; workers in other processes find it at
their next poll (``worker_poll_s``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable

from aifi.algorithms.base import Manifest
from aifi.hub.db import SessionFactory, retrying
from aifi.hub.leases import claim_next

__all__ = ["TaskQueue", "algorithms_for", "queue_of"]

logger = logging.getLogger(__name__)


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

    def put(self, task_id: str) -> None:
        """A task became SCHEDULED (it is in the database already): wake the idle workers."""
        logger.debug("task %s queued", task_id)
        self.wake()

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
