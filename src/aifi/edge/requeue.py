"""An operator's answer to work that ended badly: retry it, or discard it.

``aifi edge retry TASK`` and ``aifi edge discard TASK`` call these. Both are
recorded in the edge's events and audit trail with who asked.

* A **dead letter** (delivery gave up after its attempt limit or age) goes
  back to COMPLETED with a fresh attempt count: the next poll fetches what is
  missing and stores it into the PACS, as if for the first time.
* A **failed** task (the edge could not send it) or a **CANCELED** one (the
  hub gave up) is sent again as a new task over the same received instances,
  since the hub keeps the old task's outcome under its id; the old task
  stays as it was, with a pointer to the new one.
* ``aifi edge retry --destination NAME [--task ID]`` retries one
  destination's dead letters (:func:`retry_destination`): for the primary,
  the tasks parked as dead letters; for a further destination (a VNA, a
  research archive), only that destination's part of each task, the others
  untouched (:meth:`aifi.edge.destinations.Destinations.retry`).
* **Discarding** ends a task for good (``discarded``); the running edge
  acknowledges it at the hub with what was stored, so the hub can purge.
"""

from __future__ import annotations

from collections.abc import Sequence

from aifi.edge.config import DeliverySettings, Destination
from aifi.edge.destinations import Destinations
from aifi.edge.state import DEAD_LETTER, EdgeState
from aifi.errors import AifiError

__all__ = ["RequeueError", "discard_task", "retry_destination", "retry_task"]


class RequeueError(AifiError):
    """The task cannot be retried or discarded in its present state."""


def _find(state: EdgeState, task_id: str) -> str:
    """The full id of the task ``task_id`` names (a unique prefix is enough)."""
    matches = [t.id for t in state.tasks() if t.id.startswith(task_id)]
    if len(matches) != 1:
        raise RequeueError(
            f"no task {task_id!r} at this edge"
            if not matches
            else f"{task_id!r} names {len(matches)} tasks; give more of the id"
        )
    return matches[0]


def retry_task(state: EdgeState, task_id: str, *, by: str) -> str:
    """Queue ``task_id`` again; return the id of the task that will run (itself or a new one)."""
    task = state.task(_find(state, task_id))
    if task.state == DEAD_LETTER:
        state.update_task(
            task.id,
            state="COMPLETED",
            attempts=0,
            next_attempt_at=0,
            first_failure_at=None,
            reason=f"retry requested by {by}",
        )
        state.record_event("retry-requested", f"delivery retried by {by}", task_id=task.id)
        return task.id
    if task.state in ("failed", "CANCELED"):
        new_id = state.requeue_as_new_task(task.id)
        state.update_task(task.id, reason=f"{task.reason or ''} (sent again as task {new_id})")
        state.record_event(
            "retry-requested", f"sent again as task {new_id} by {by}", task_id=task.id
        )
        state.record_event("task-created", f"retry of task {task.id} by {by}", task_id=new_id)
        return new_id
    raise RequeueError(
        f"task {task.id} is {task.state}; only dead-letter, failed or CANCELED tasks are retried"
    )


def retry_destination(
    state: EdgeState,
    destinations: Sequence[Destination],
    destination: str,
    *,
    task_id: str | None = None,
    by: str,
    default_kinds: Sequence[str] = ("sr", "gsps", "sc"),
    settings: DeliverySettings | None = None,
) -> list[str]:
    """Retry ``destination``'s dead letters (of ``task_id`` only, when given); the tasks retried.

    ``destinations`` are the edge's result destinations in order (the first is
    the primary, whose dead letter is the task's own).
    """
    names = [d.name for d in destinations]
    if destination not in names:
        raise RequeueError(
            f"no destination {destination!r} in edge.toml; known: {', '.join(names) or 'none'}"
        )
    wanted = [_find(state, task_id)] if task_id is not None else None
    if destination == names[0]:
        parked = [t.id for t in state.tasks([DEAD_LETTER]) if wanted is None or t.id in wanted]
        for parked_id in parked:
            retry_task(state, parked_id, by=f"{by} (destination {destination})")
        retried = parked
    else:
        others = Destinations(
            state, destinations[1:], default_kinds, settings or DeliverySettings()
        )
        retried = others.retry(destination, wanted, by=by)
    if task_id is not None and not retried:
        raise RequeueError(
            f"task {wanted[0] if wanted else task_id} has no dead letter at destination"
            f" {destination}"
        )
    return retried


def discard_task(state: EdgeState, task_id: str, *, by: str) -> None:
    """End ``task_id`` for good; its results, if any, stay at the hub until its retention."""
    task = state.task(_find(state, task_id))
    if task.state in ("delivered", "discarded"):
        raise RequeueError(f"task {task.id} is {task.state}; there is nothing to discard")
    state.update_task(
        task.id, state="discarded", reason=f"discarded by {by} ({task.state}: {task.reason})"
    )
    state.record_event(
        "task-discarded", f"discarded by {by} in state {task.state}", task_id=task.id
    )
