"""``/tasks/{id}/feedback``, ``/feedback/agreement`` and ``/drift``: readers' verdicts (IHE AIRAI).

The edge sends a radiologist's verdict on one of its hospital's completed
tasks; operators and auditors read agreement rates and drift reports, a
hospital its own agreement rates. See docs/feedback.md.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel

from aifi.hub import feedback
from aifi.hub.auth import CurrentHospital, Reader
from aifi.hub.deps import ContextDep, SessionDep
from aifi.hub.drift import DriftBounds, drift_reports
from aifi.hub.feedback import AgreementRow, FeedbackIn, FeedbackOut
from aifi.hub.models import Feedback
from aifi.hub.tasks import TaskRefused, find_task

__all__ = ["router"]

router = APIRouter(tags=["feedback"])


class FigureOut(BaseModel):
    name: str
    baseline: float | None
    recent: float | None
    baseline_samples: int
    recent_samples: int
    change: float | None
    bound: float
    flagged: bool
    note: str


class DriftOut(BaseModel):
    algorithm_id: str
    algorithm_version: str
    first_task_at: datetime
    baseline_end: datetime
    recent_start: datetime
    flagged: bool
    flags: list[str]
    figures: list[FigureOut]


@router.post("/tasks/{task_id}/feedback", response_model=FeedbackOut)
def give_feedback(
    task_id: str, body: FeedbackIn, hospital: CurrentHospital, session: SessionDep
) -> FeedbackOut:
    """A reader's verdict on the task's result: agree or disagree, optionally a correction code."""
    outcome = feedback.record_feedback(session, hospital.id, task_id, body)
    if isinstance(outcome, TaskRefused):
        raise HTTPException(outcome.status_code, detail=outcome.detail)
    return feedback.feedback_out(outcome)


@router.get("/tasks/{task_id}/feedback", response_model=FeedbackOut)
def read_feedback(task_id: str, hospital: CurrentHospital, session: SessionDep) -> FeedbackOut:
    task = find_task(session, hospital.id, task_id)
    row = None if task is None else session.get(Feedback, task.id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no verdict on task {task_id}")
    return feedback.feedback_out(row)


@router.get("/feedback/agreement", response_model=list[AgreementRow])
def agreement(
    _reader: Reader,
    session: SessionDep,
    hospital_id: str | None = None,
    algorithm_id: str | None = None,
) -> list[AgreementRow]:
    """Agreement per hospital x algorithm x version."""
    return feedback.agreement(session, hospital_id=hospital_id, algorithm_id=algorithm_id)


@router.get("/feedback/agreement/mine", response_model=list[AgreementRow])
def my_agreement(hospital: CurrentHospital, session: SessionDep) -> list[AgreementRow]:
    """The calling hospital's own agreement rates."""
    return feedback.agreement(session, hospital_id=hospital.id)


@router.get("/drift", response_model=list[DriftOut])
def drift(_reader: Reader, session: SessionDep, context: ContextDep) -> list[DriftOut]:
    """Each algorithm version's recent figures against its baseline, with the flags raised."""
    reports = drift_reports(session, DriftBounds.of(context.settings))
    return [
        DriftOut(
            algorithm_id=r.algorithm_id,
            algorithm_version=r.algorithm_version,
            first_task_at=r.first_task_at,
            baseline_end=r.baseline_end,
            recent_start=r.recent_start,
            flagged=r.flagged,
            flags=r.flags,
            figures=[FigureOut(**f.__dict__) for f in r.figures],
        )
        for r in reports
    ]
