"""The durable outbox: the driver that moves tasks through pseudonymize and upload.

Each step is its own stage — :mod:`aifi.edge.pseudonymize` (``pending`` →
``ready``, or ``held`` while the release policy awaits approval) and
:mod:`aifi.edge.upload` (``ready`` → ``submitted``) — and every step is
recorded in the edge's state before the next begins, so a task survives an
edge restart and a hub outage. This module only decides the order and what
an outcome means:

* due tasks come by priority, then age (:meth:`EdgeState.due_tasks`), so an
  urgent CT is pseudonymized and sent before the day's radiographs;
* when the hub is unreachable the task waits with exponential back-off
  (capped by ``hub.max_backoff_s``);
* a definite refusal (an instance the hub judged identifying, an algorithm
  the hospital may not use, ...) ends the task ``failed`` with the hub's
  reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from aifi.deid import PseudonymMap
from aifi.deid.descriptors import Vocabulary
from aifi.edge.policy import Release
from aifi.edge.pseudonymize import HELD, DigestFn, Pseudonymize
from aifi.edge.state import EdgeState, TaskRow
from aifi.edge.upload import Upload
from aifi.errors import HubRefused, HubUnavailable
from aifi.protocol.client import HubClient

__all__ = ["Outbox"]

logger = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self,
        state: EdgeState,
        hub: HubClient,
        key: bytes,
        pseudonym_map: PseudonymMap,
        outbox_dir: Path,
        release_for: Callable[[str], Release],
        *,
        vocabulary: Callable[[], Vocabulary | None] = lambda: None,
        digest_for: Callable[[str], DigestFn | None] = lambda _algorithm_id: None,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.state = state
        self.max_backoff_s = max_backoff_s
        self.pseudonymize = Pseudonymize(
            state,
            key,
            pseudonym_map,
            outbox_dir,
            release_for,
            self._fail,
            vocabulary=vocabulary,
            digest_for=digest_for,
        )
        self.upload = Upload(state, hub, outbox_dir)

    def tick(self) -> int:
        """Advance every task that is due, urgent and stat ones first; return how many moved."""
        moved = 0
        for task in self.state.due_tasks(HELD):
            moved += self._guarded(task, self.pseudonymize.recheck)
        for task in self.state.due_tasks("pending"):
            moved += self._guarded(task, self.pseudonymize.prepare)
        for task in self.state.due_tasks("ready"):
            moved += self._guarded(task, self.upload.send)
        return moved

    def _guarded(self, task: TaskRow, step: Callable[[TaskRow], None]) -> int:
        try:
            step(task)
        except HubUnavailable as exc:
            delay = min(self.max_backoff_s, 0.5 * 2**task.attempts)
            self.state.update_task(
                task.id,
                attempts=task.attempts + 1,
                next_attempt_at=time.time() + delay,
                reason=str(exc),
            )
            logger.warning("task %s: %s (next try in %.1f s)", task.id, exc, delay)
            return 0
        except HubRefused as exc:
            self._fail(task, str(exc))
        except Exception as exc:
            logger.exception("task %s: unexpected failure", task.id)
            self._fail(task, f"internal error at the edge: {type(exc).__name__}: {exc}")
        return 1

    def _fail(self, task: TaskRow, reason: str) -> None:
        self.state.update_task(task.id, state="failed", reason=reason)
        self.state.record_event("task-failed", reason, task_id=task.id)
        logger.error("task %s failed: %s", task.id, reason)
