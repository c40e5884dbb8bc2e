"""How tasks reach workers: a small :class:`Dispatcher` protocol.

The hub only ever calls ``submit(task_id)``; the task's state is in the
database, so a dispatcher may lose queued ids on a crash — the hub
re-submits every task left SCHEDULED or IN PROGRESS when it starts. The
embedded default runs tasks on a thread pool inside the hub; a Celery
dispatcher can implement the same three methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, runtime_checkable

__all__ = ["Dispatcher", "ThreadPoolDispatcher"]

logger = logging.getLogger(__name__)


@runtime_checkable
class Dispatcher(Protocol):
    """Runs tasks by id, somewhere."""

    def submit(self, task_id: str) -> None:
        """Queue a task to run; returns at once. A task not queued stays SCHEDULED."""
        ...

    def start(self) -> None:
        """Begin accepting and running tasks."""
        ...

    def stop(self) -> None:
        """Finish running tasks, drop queued ones (they stay SCHEDULED) and stop."""
        ...


class ThreadPoolDispatcher:
    """Run tasks on ``workers`` threads of this process."""

    def __init__(self, run: Callable[[str], None], workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self._run = run
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="aifi-worker")

    def submit(self, task_id: str) -> None:
        executor = self._executor
        if executor is None:  # stopping: the task stays SCHEDULED and runs after the restart
            logger.warning("task %s not queued: the worker pool is stopped", task_id)
            return
        try:
            future = executor.submit(self._run, task_id)
        except RuntimeError:  # shut down between the check and the call
            logger.warning("task %s not queued: the worker pool is stopping", task_id)
            return
        future.add_done_callback(lambda done: _log_failure(task_id, done))

    def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _log_failure(task_id: str, future: Future[None]) -> None:
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        logger.error("task %s: worker failed", task_id, exc_info=exc)
