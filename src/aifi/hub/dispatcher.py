"""How tasks reach workers: a small :class:`Dispatcher` protocol over the database queue.

The hub only ever calls ``submit(task_id)`` after the task is committed
SCHEDULED; the row *is* the queue entry (:mod:`aifi.hub.queue`), so nothing
is lost when a process dies. Two dispatchers:

* :class:`WorkerPool` — ``slots`` worker threads of this process, each taking
  the next task with a lease and running it through its own executor (a
  child process by default). ``submit`` wakes them. The embedded
  ``aifi hub serve`` and ``aifi hub worker`` run one.
* :class:`ElsewhereWorkers` — the ``aifi hub api`` process runs no
  algorithm: ``submit`` puts the task on the queue, which on PostgreSQL
  notifies the workers of the other processes (:mod:`aifi.hub.queue`);
  otherwise they find it at their next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from typing import Protocol, runtime_checkable

from aifi.hub.queue import TaskQueue
from aifi.hub.runner import TaskRunner

__all__ = ["STOP_GRACE_S", "Dispatcher", "ElsewhereWorkers", "WorkerPool"]

logger = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
"""How long stopping waits for running tasks to end before giving them back to the queue."""


@runtime_checkable
class Dispatcher(Protocol):
    """Runs tasks by id, somewhere."""

    def submit(self, task_id: str) -> None:
        """A task was committed SCHEDULED; returns at once."""
        ...

    def start(self) -> None:
        """Begin running tasks."""
        ...

    def stop(self) -> None:
        """Stop; tasks not finished stay in (or go back to) the queue."""
        ...


class ElsewhereWorkers:
    """The API process's dispatcher: workers are other processes, notified or polling."""

    def __init__(self, queue: TaskQueue | None = None) -> None:
        self._queue = queue

    def submit(self, task_id: str) -> None:
        logger.debug("task %s scheduled for the hub's workers", task_id)
        if self._queue is not None:
            self._queue.put(task_id)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class WorkerPool:
    """``slots`` threads taking tasks of ``algorithm_ids`` (None: any) from ``queue``.

    ``make_runner(stopping)`` makes each slot's :class:`TaskRunner` (with its
    own executor); ``stopping`` is set when the pool stops, and a runner then
    gives a running task back to the queue. With ``warm`` each slot starts
    its executor before it takes a task (a dedicated worker process);
    otherwise at its first task (the embedded hub, which may never run one).
    """

    def __init__(
        self,
        queue: TaskQueue,
        make_runner: Callable[[threading.Event], TaskRunner],
        slots: int,
        algorithm_ids: Collection[str] | None = None,
        *,
        warm: bool = False,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self._queue = queue
        self._make_runner = make_runner
        self._slots = slots
        self._algorithm_ids = algorithm_ids
        self._warm = warm
        self._no_more = threading.Event()  # take no new task
        self._abort = threading.Event()  # give running tasks back
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self._threads:
            return
        self._queue.listen()
        for number in range(self._slots):
            runner = self._make_runner(self._abort)
            thread = threading.Thread(
                target=self._serve, args=(runner,), name=f"aifi-worker-{number}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def submit(self, task_id: str) -> None:
        self._queue.put(task_id)

    def _serve(self, runner: TaskRunner) -> None:
        try:
            if self._warm:
                try:
                    runner.warm()  # not while holding a lease: loading may take seconds
                except Exception:  # the first task tries again, and fails with the reason
                    logger.exception("worker slot could not start its executor")
            while not self._no_more.is_set():
                task_id = self._queue.take(runner.worker, self._algorithm_ids, self._no_more)
                if task_id is None:
                    break
                try:
                    runner.run_claimed(task_id)
                except Exception:  # the slot must outlive any failure; the lease expires
                    logger.exception("task %s: worker failed", task_id)
        finally:
            runner.close()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        self._no_more.set()
        self._queue.wake()
        for thread in self._threads:
            thread.join(grace_s)
        if any(t.is_alive() for t in self._threads):
            logger.warning("running tasks did not end in %.0f s: giving them back", grace_s)
            self._abort.set()
            for thread in self._threads:
                thread.join(30)
        self._threads = []
        self._queue.stop_listening()
