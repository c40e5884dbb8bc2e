"""The edge↔hub wire contract: request and response bodies of the hub's API.

Shared by the hub and the edge, so it lives in the contract layer and
imports nothing of either (only :mod:`aifi.core`).

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
* ``/workitems`` — the same tasks as UPS-RS workitems (DICOM JSON, PS3.18 §11):
  create, retrieve, search, cancelrequest (``docs/workitems.md``).
* ``GET /dicomweb/studies/{study}/series/{series}/instances/{sop}`` — WADO-RS
  (PS3.18 §10.4), multipart/related; type="application/dicom".

``POST /tasks`` answers 403 with the reason when no subscription of the
hospital covers the algorithm now, or the version it selects is suspended,
retired or not installed.

Governance endpoints, by :class:`Role` (each operation of the OpenAPI
document names its roles in ``x-aifi-roles``):

* ``GET /catalog`` (any role); ``POST /catalog/{id}/{version}/state`` (operator).
* ``GET|POST /hospitals``, ``GET|POST /principals``,
  ``POST /principals/{id}/tokens`` (rotate), ``DELETE /tokens/{id}`` (revoke) —
  operator (auditors may list hospitals).
* ``GET|POST /subscriptions``, ``POST /subscriptions/{id}/end`` — operator
  (auditors may list).
* ``GET /audit``, ``GET /audit/verify``, ``GET /audit/export`` (JSON lines),
  ``GET /usage?month=YYYY-MM&format=json|csv`` — auditor or operator.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aifi.core.tasks import TaskState

__all__ = [
    "PRIORITY_RANK",
    "Acknowledge",
    "AlgorithmState",
    "AuditEventOut",
    "CatalogEntryOut",
    "CatalogStateChange",
    "HospitalCreate",
    "HospitalOut",
    "IssuedToken",
    "PrincipalCreate",
    "PrincipalOut",
    "PriorStudy",
    "Priority",
    "PriorsRequest",
    "ResultRef",
    "Role",
    "SubscriptionCreate",
    "SubscriptionOut",
    "TaskCreate",
    "TaskOut",
    "TaskState",
    "TokenInfo",
    "UsageRow",
]


class Role(StrEnum):
    """What a principal may do at the hub."""

    HOSPITAL = "hospital"  # its own studies, tasks and results only
    OPERATOR = "operator"  # catalog, hospitals, tokens, subscriptions
    AUDITOR = "auditor"  # read-only: audit trail and usage
    PERFORMER = "performer"  # an outside UPS performer: claims and ends workitems (PS3.4 CC.1.1)


class AlgorithmState(StrEnum):
    """A catalog version's state; only ``active`` versions take new tasks."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    RETIRED = "retired"


#: Scheduled Procedure Step Priority (0074,1200), PS3.3 C.30.2.1: HIGH is urgent or stat work.
Priority = Literal["HIGH", "MEDIUM", "LOW"]
#: Queue order of each priority: lower goes first (then the oldest).
PRIORITY_RANK: dict[str, int] = {"HIGH": 0, "MEDIUM": 1, "LOW": 2}


class PriorStudy(BaseModel):
    """An earlier study of the same patient, handed to the algorithm beside the current one.

    Pseudonymized like the current study with the same patient pseudonym (the
    same algorithm key), so the hub can check that both belong to one patient
    of the hospital and learns nothing more. Its instances are uploaded by
    STOW-RS first, like the current study's.
    """

    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str = Field(min_length=1, max_length=64)
    sop_instance_uids: list[str] = Field(min_length=1, description="instances uploaded for it")


class TaskCreate(BaseModel):
    """Ask the hub to run one algorithm on one pseudonymized study (and its priors).

    Unknown fields are refused (422): a misspelt ``priorty`` must not be dropped silently.
    ``prior_studies`` only for an algorithm whose manifest asks for priors.
    """

    model_config = ConfigDict(extra="forbid")

    client_task_id: str = Field(min_length=1, max_length=64, description="edge's idempotency key")
    algorithm_id: str = Field(min_length=1, max_length=64)
    study_instance_uid: str = Field(min_length=1, max_length=64)
    sop_instance_uids: list[str] = Field(min_length=1, description="instances uploaded for it")
    correlation_id: str | None = Field(default=None, max_length=64)
    priority: Priority = Field(
        default="MEDIUM", description="Scheduled Procedure Step Priority (0074,1200)"
    )
    prior_studies: list[PriorStudy] = Field(
        default_factory=list,
        max_length=10,
        description="earlier studies of the same patient, for an algorithm that asks for priors",
    )


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
    priority: Priority = "MEDIUM"
    created_at: datetime
    updated_at: datetime
    acknowledged: bool = False
    results: list[ResultRef] = []
    findings: dict[str, Any] | None = None
    prior_studies: list[PriorStudy] = Field(
        default_factory=list, description="the task's prior inputs (role prior), by study"
    )


class Acknowledge(BaseModel):
    """The edge stored these result objects into the hospital's PACS."""

    delivered_sop_instance_uids: list[str]


class PriorsRequest(BaseModel):
    """What earlier studies an algorithm version asks for (its manifest's ``priors``).

    The edge finds them by C-FIND for the same patient (PS3.4 C.6.2): the same
    modality, the same BodyPartExamined when ``same_body_part``, a StudyDate
    within ``years`` before the current study, at most ``max_studies``.
    """

    years: float = Field(gt=0)
    same_body_part: bool = True
    max_studies: int = Field(ge=1, le=10)


class CatalogEntryOut(BaseModel):
    """One algorithm version in the hub's catalog."""

    algorithm_id: str
    version: str
    name: str
    vendor: str
    intended_use: str
    regulatory_status: str
    keep_attributes: list[str] = Field(
        default_factory=list,
        description="attributes the edge keeps for this algorithm when pseudonymizing, "
        "beyond what the de-identification profile retains",
    )
    priors: PriorsRequest | None = Field(
        default=None, description="the earlier studies it asks for; None: it takes none"
    )
    state: AlgorithmState
    registered_at: datetime


class CatalogStateChange(BaseModel):
    state: AlgorithmState
    reason: str | None = Field(default=None, max_length=500)


class HospitalCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    subscribe: list[str] | None = Field(
        default=None,
        description='algorithm ids for a connection-test subscription; default ["integrity-check"]',
    )


class HospitalOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    principal_id: str | None = None


class PrincipalCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: Role


class TokenInfo(BaseModel):
    """A token's record; the token itself is never shown again."""

    id: str
    created_at: datetime
    revoked_at: datetime | None


class PrincipalOut(BaseModel):
    id: str
    name: str
    role: Role
    hospital_id: str | None
    tokens: list[TokenInfo] = []


class IssuedToken(BaseModel):
    """A new token, shown only in this answer; the hub keeps its SHA-256."""

    principal_id: str
    token_id: str
    token: str
    hospital_id: str | None = None


class SubscriptionCreate(BaseModel):
    hospital_id: str = Field(min_length=1, max_length=32)
    algorithm_id: str = Field(min_length=1, max_length=64)
    algorithm_version: str | None = Field(
        default=None, max_length=64, description="pin a version; null: latest active"
    )
    valid_from: datetime | None = Field(default=None, description="default: now")
    valid_until: datetime | None = Field(default=None, description="default: open-ended")
    agreement_reference: str = Field(min_length=1, max_length=200)
    controller: str = Field(min_length=1, max_length=200)
    processor: str = Field(min_length=1, max_length=200)
    sub_processor: str | None = Field(default=None, max_length=200)


class SubscriptionOut(BaseModel):
    id: str
    hospital_id: str
    algorithm_id: str
    algorithm_version: str | None
    valid_from: datetime
    valid_until: datetime | None
    agreement_reference: str
    controller: str
    processor: str
    sub_processor: str | None


class UsageRow(BaseModel):
    """Usage of one algorithm by one hospital in one month (for joint procurement)."""

    month: str
    hospital_id: str
    hospital: str
    algorithm_id: str
    algorithm_versions: list[str]
    studies: int
    instances: int
    bytes_in: int
    bytes_out: int
    compute_seconds: float
    completed: int
    canceled: int
    pending: int
    refused: int


class AuditEventOut(BaseModel):
    seq: int
    at: str
    actor: str
    action: str
    hospital: str | None
    task: str | None
    algorithm: str | None
    algorithm_version: str | None
    agreement: str | None
    correlation_id: str | None
    detail: dict[str, Any]
    chain: str = "main"  # hospital:<id>, hub, or main (events from before per-tenant chains)
    prev_hash: str
    hash: str
