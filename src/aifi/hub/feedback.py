"""Radiologists' verdicts on results, and agreement rates (IHE AIRAI as the model).

IHE AI Results Assessment (AIRAI) lets a reader accept, reject or correct an
AI result; here a verdict is ``agree`` or ``disagree`` with an optional
correction code (code value, coding scheme designator, code meaning, as a
PS3.3 §8.8 Code Sequence item would carry them). The edge sends it for one
of its hospital's completed tasks; the payload has only these fields
(anything else is refused), so it carries no identity: neither the
reader's name nor the patient's. One verdict per task: a later one replaces
the earlier one, and each is recorded in the audit trail.

Agreement rates are kept per hospital x algorithm x version.
"""

from __future__ import annotations

import logging
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from aifi.hub.auditing import record_on_task
from aifi.hub.models import Feedback, Hospital, utcnow
from aifi.hub.tasks import TaskRefused, find_task
from aifi.protocol.schemas import TaskState

__all__ = [
    "AgreementRow",
    "CorrectionCode",
    "FeedbackIn",
    "FeedbackOut",
    "Verdict",
    "agreement",
    "feedback_out",
    "record_feedback",
]

logger = logging.getLogger(__name__)

_CODE_TEXT = r"^[^\x00-\x1f\\]*$"  # PS3.5 §6.2: no control characters, no backslash


class Verdict(StrEnum):
    AGREE = "agree"
    DISAGREE = "disagree"


class CorrectionCode(BaseModel):
    """What the reader found instead, as a coded concept (PS3.3 Table 8.8-1a)."""

    model_config = ConfigDict(extra="forbid")

    code_value: str = Field(min_length=1, max_length=16, pattern=_CODE_TEXT)
    coding_scheme_designator: str = Field(min_length=1, max_length=16, pattern=_CODE_TEXT)
    code_meaning: str = Field(min_length=1, max_length=64, pattern=_CODE_TEXT)


class FeedbackIn(BaseModel):
    """A verdict as the edge sends it: only these fields are accepted."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    correction: CorrectionCode | None = None


class FeedbackOut(BaseModel):
    task_id: str
    algorithm_id: str
    algorithm_version: str | None
    verdict: Verdict
    correction: CorrectionCode | None
    recorded_at: datetime


class AgreementRow(BaseModel):
    """How often readers agreed with one version at one hospital."""

    hospital_id: str
    hospital: str
    algorithm_id: str
    algorithm_version: str | None
    verdicts: int
    agree: int
    disagree: int
    agreement_rate: float | None


def feedback_out(row: Feedback) -> FeedbackOut:
    correction = None
    if row.correction_code_value is not None:
        correction = CorrectionCode(
            code_value=row.correction_code_value,
            coding_scheme_designator=row.correction_coding_scheme or "",
            code_meaning=row.correction_code_meaning or "",
        )
    return FeedbackOut(
        task_id=row.task_id,
        algorithm_id=row.algorithm_id,
        algorithm_version=row.algorithm_version,
        verdict=Verdict(row.verdict),
        correction=correction,
        recorded_at=row.recorded_at,
    )


def record_feedback(
    session: Session,
    hospital_id: str,
    task_id: str,
    body: FeedbackIn,
    *,
    at: datetime | None = None,
) -> Feedback | TaskRefused:
    """Record (or replace) the verdict on the hospital's completed task; commits and audits."""
    task = find_task(session, hospital_id, task_id)
    if task is None:
        return TaskRefused(404, f"no task {task_id} for this hospital")
    if task.state != TaskState.COMPLETED.value:
        return TaskRefused(
            409, f"task {task_id} is {task.state}; only a completed task's result can be assessed"
        )
    row = session.get(Feedback, task_id)
    if row is None:
        row = Feedback(
            task_id=task.id,
            hospital_id=hospital_id,
            algorithm_id=task.algorithm_id,
            algorithm_version=task.algorithm_version,
        )
        session.add(row)
    row.verdict = body.verdict.value
    code = body.correction
    row.correction_code_value = code.code_value if code else None
    row.correction_coding_scheme = code.coding_scheme_designator if code else None
    row.correction_code_meaning = code.code_meaning if code else None
    row.recorded_at = at or utcnow()
    record_on_task(
        session,
        "feedback.recorded",
        task,
        actor=f"hospital:{hospital_id}",
        detail={
            "verdict": row.verdict,
            "correction": None
            if code is None
            else f"({code.code_value}, {code.coding_scheme_designator})",
        },
    )
    session.commit()
    logger.info("task %s assessed by a reader: %s", task.id, row.verdict)
    return row


def agreement(
    session: Session,
    *,
    hospital_id: str | None = None,
    algorithm_id: str | None = None,
    since: datetime | None = None,
) -> list[AgreementRow]:
    """Agreement per hospital x algorithm x version (optionally one hospital's, since a time)."""
    agreed = func.sum(case((Feedback.verdict == Verdict.AGREE.value, 1), else_=0))
    query = (
        select(
            Feedback.hospital_id,
            Hospital.name,
            Feedback.algorithm_id,
            Feedback.algorithm_version,
            func.count(),
            agreed,
        )
        .join(Hospital, Hospital.id == Feedback.hospital_id)
        .group_by(
            Feedback.hospital_id, Hospital.name, Feedback.algorithm_id, Feedback.algorithm_version
        )
        .order_by(Hospital.name, Feedback.algorithm_id, Feedback.algorithm_version)
    )
    if hospital_id is not None:
        query = query.where(Feedback.hospital_id == hospital_id)
    if algorithm_id is not None:
        query = query.where(Feedback.algorithm_id == algorithm_id)
    if since is not None:
        query = query.where(Feedback.recorded_at >= since)
    rows = []
    for hospital, name, algorithm, version, total, agree in session.execute(query):
        agree = int(agree or 0)
        rows.append(
            AgreementRow(
                hospital_id=hospital,
                hospital=name,
                algorithm_id=algorithm,
                algorithm_version=version,
                verdicts=int(total),
                agree=agree,
                disagree=int(total) - agree,
                agreement_rate=agree / total if total else None,
            )
        )
    return rows
