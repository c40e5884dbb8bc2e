"""Task states and the transitions between them.

A hub task follows the DICOM Unified Procedure Step (PS3.4 Annex CC,
Procedure Step State (0074,1000)): SCHEDULED → IN PROGRESS → COMPLETED or
CANCELED, a failure ending CANCELED with its reason. An operator's re-run
puts a CANCELED task back to SCHEDULED. The edge adds its own states around
them (see :mod:`aifi.edge.state`). Part of the contract layer: imports
nothing else of aifi.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TRANSITIONS", "TaskState", "can_move"]


class TaskState(StrEnum):
    """Procedure Step State (0074,1000) values, PS3.4 CC.1.1."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


#: The allowed moves (PS3.4 Table CC.1.1-2), plus a re-run of a canceled task.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.SCHEDULED: frozenset({TaskState.IN_PROGRESS, TaskState.CANCELED}),
    TaskState.IN_PROGRESS: frozenset(
        {TaskState.COMPLETED, TaskState.CANCELED, TaskState.SCHEDULED}  # lease lost: re-queued
    ),
    TaskState.COMPLETED: frozenset(),
    TaskState.CANCELED: frozenset({TaskState.SCHEDULED}),  # an operator's re-run
}


def can_move(current: TaskState | str, target: TaskState | str) -> bool:
    """Whether a task in ``current`` may move to ``target``."""
    return TaskState(target) in TRANSITIONS[TaskState(current)]
