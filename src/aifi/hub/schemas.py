"""Request and response bodies of the hub's task API (shared by hub and edge).

Task states follow the DICOM Unified Procedure Step (PS3.4 Annex CC,
Procedure Step State (0074,1000)): SCHEDULED → IN PROGRESS → COMPLETED or
CANCELED. A failure ends CANCELED with its reason recorded. "Delivered" is
the edge's own state; the hub only records that the edge acknowledged.

Endpoints (all need ``Authorization: Bearer <hospital token>``, all scoped
to the calling hospital):

* ``POST /dicomweb/studies`` — STOW-RS (PS3.18 §10.5), multipart/related;
  type="application/dicom"; answers a DICOM JSON store response.
* ``POST /tasks`` — :class:`TaskCreate` → :class:`TaskOut`; 201 when
  created, 200 when ``client_task_id`` already existed (idempotent re-send).
* ``GET /tasks?state=COMPLETED&acknowledged=false`` → ``list[TaskOut]``.
* ``GET /tasks/{task_id}`` → :class:`TaskOut`.
* ``POST /tasks/{task_id}/acknowledge`` — :class:`Acknowledge` → :class:`TaskOut`.
* ``GET /dicomweb/studies/{study}/series/{series}/instances/{sop}`` — WADO-RS
  (PS3.18 §10.4), multipart/related; type="application/dicom".
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["Acknowledge", "ResultRef", "TaskCreate", "TaskOut", "TaskState"]


class TaskState(StrEnum):
    """Procedure Step State (0074,1000) values, PS3.4 CC.1.1."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


class TaskCreate(BaseModel):
    """Ask the hub to run one algorithm on one pseudonymized study."""

    client_task_id: str = Field(min_length=1, max_length=64, description="edge's idempotency key")
    algorithm_id: str = Field(min_length=1, max_length=64)
    study_instance_uid: str = Field(min_length=1, max_length=64)
    sop_instance_uids: list[str] = Field(min_length=1, description="instances uploaded for it")
    correlation_id: str | None = Field(default=None, max_length=64)


class ResultRef(BaseModel):
    """One result object, retrievable by WADO-RS."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    kind: str = Field(description="sr, gsps, sc, ...")


class TaskOut(BaseModel):
    id: str
    client_task_id: str
    algorithm_id: str
    algorithm_version: str | None
    study_instance_uid: str
    state: TaskState
    reason: str | None = Field(default=None, description="why the task was canceled")
    urgent: bool = False
    created_at: datetime
    updated_at: datetime
    acknowledged: bool = False
    results: list[ResultRef] = []
    findings: dict[str, Any] | None = None


class Acknowledge(BaseModel):
    """The edge stored these result objects into the hospital's PACS."""

    delivered_sop_instance_uids: list[str]
