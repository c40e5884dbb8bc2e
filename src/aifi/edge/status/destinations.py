"""Each task's state at each result destination, and a summary per destination.

What the status page shows an admin of several destinations (a PACS, a VNA,
a research archive): for every task, where its results are at each one, and
for every destination how many tasks it has, is still being retried at, or
gave up on. The words are the page's:

============  ==============================================================
delivered     the destination stored every result object it takes
committed     stored, and its Storage Commitment report said every object
              is kept (PS3.4 Annex J; ``commitment = true``)
committing    stored; the storage commitment report has not come yet
retrying      a store (or commitment) failed; the next attempt is scheduled
dead letter   given up on after its attempt limit or age, with the reason;
              ``aifi edge retry --destination NAME`` (or the page) sends again
pending       the results are at the hub; this destination has not been tried
waiting       the hub has not finished the task yet
============  ==============================================================

The primary destination's state is the task's own (its attempts, its dead
letter); every further one has its own row (:mod:`aifi.edge.destinations`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from aifi.edge.commitment import Commitments
from aifi.edge.config import Destination
from aifi.edge.destinations import COMMITTED, COMMITTING, STORED, DestinationRow, Destinations
from aifi.edge.state import DEAD_LETTER, EdgeState, TaskRow

__all__ = ["LABELS", "DestinationState", "DestinationSummary", "DestinationsView"]

#: The states shown, in the order of the summary's columns.
LABELS = ("delivered", "committed", "committing", "retrying", "dead letter", "pending")
# Tasks that ended without results to deliver: no destination state to show.
_FINAL = ("failed", "CANCELED", "discarded")


@dataclass(frozen=True)
class DestinationState:
    """One task at one destination."""

    destination: str
    label: str  # one of LABELS, or "waiting" / "" (nothing to deliver)
    reason: str = ""
    attempts: int = 0
    primary: bool = False

    @property
    def retryable(self) -> bool:
        return self.label == "dead letter" and not self.primary


@dataclass(frozen=True)
class DestinationSummary:
    """One destination: where it is, whether it commits, how many tasks in each state."""

    destination: Destination
    primary: bool
    counts: dict[str, int]


class DestinationsView:
    """Reads the destination states of tasks from the edge's state database."""

    def __init__(
        self,
        state: EdgeState,
        destinations: Sequence[Destination],
        destination_rows: Destinations,
        commitments: Commitments,
    ) -> None:
        self.state = state
        self.destinations = list(destinations)
        self.rows = destination_rows
        self.commitments = commitments

    def of_task(self, task: TaskRow) -> list[DestinationState]:
        """The task at each destination, the primary first."""
        if not self.destinations:
            return []
        rows = self.rows.rows(task.id)
        found = [self._primary(task)]
        for destination in self.destinations[1:]:
            found.append(self._further(task, destination, rows.get(destination.name)))
        return found

    def summary(self, tasks: Sequence[TaskRow]) -> list[DestinationSummary]:
        """Per destination: how many of ``tasks`` are in each state."""
        counts: dict[str, Counter[str]] = {d.name: Counter() for d in self.destinations}
        for task in tasks:
            for one in self.of_task(task):
                if one.label in LABELS:
                    counts[one.destination][one.label] += 1
        return [
            DestinationSummary(d, i == 0, {label: counts[d.name][label] for label in LABELS})
            for i, d in enumerate(self.destinations)
        ]

    def dead_letters(self, tasks: Sequence[TaskRow]) -> list[tuple[TaskRow, DestinationState]]:
        """Every further destination given up on, with its task (the page offers retry)."""
        return [(t, one) for t in tasks for one in self.of_task(t) if one.retryable]

    def _primary(self, task: TaskRow) -> DestinationState:
        primary = self.destinations[0]
        name = primary.name
        if task.state == DEAD_LETTER:
            return DestinationState(name, "dead letter", task.reason or "", task.attempts, True)
        if task.state == "delivered" or (task.state == "COMPLETED" and task.delivered_at):
            # delivered (again COMPLETED only while a further destination is retried)
            label = "committed" if primary.commitment else "delivered"
            return DestinationState(name, label, primary=True)
        if task.state != "COMPLETED":
            label = "waiting" if task.state not in _FINAL else ""
            return DestinationState(name, label, primary=True)
        if task.attempts:
            return DestinationState(name, "retrying", task.reason or "", task.attempts, True)
        if primary.commitment:
            latest = self.commitments.latest(task.id, name)
            if latest is not None and latest.state == "requested":
                return DestinationState(name, "committing", primary=True)
        return DestinationState(name, "pending", primary=True)

    def _further(
        self, task: TaskRow, destination: Destination, row: DestinationRow | None
    ) -> DestinationState:
        name = destination.name
        if row is None:
            if task.state in ("COMPLETED", "delivered"):
                return DestinationState(name, "pending")
            return DestinationState(name, "waiting" if task.state not in _FINAL else "")
        reason = row.reason or ""
        if row.state == DEAD_LETTER:
            return DestinationState(name, "dead letter", reason, row.attempts)
        if row.state == STORED:
            return DestinationState(name, "delivered")
        if row.state == COMMITTED:
            return DestinationState(name, "committed")
        if row.state == COMMITTING:
            return DestinationState(name, "committing", attempts=row.attempts)
        if row.attempts:
            return DestinationState(name, "retrying", reason, row.attempts)
        return DestinationState(name, "pending", reason)
