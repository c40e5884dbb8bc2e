"""The task API's work, as plain functions the routes call.

A task is a Unified Procedure Step (PS3.4 Annex CC): created SCHEDULED,
claimed IN PROGRESS by a worker, ended COMPLETED or CANCELED with a reason.
Every function takes the calling hospital's id and never returns another
hospital's rows. ``client_task_id`` makes creation idempotent: the edge may
re-send a request after a timeout without getting two tasks.

No subscription, no processing: a task is created only when a subscription
of the hospital covers the algorithm now and the version it selects
(pinned, or the newest active one) is active and installed. A refusal is
answered with its reason and recorded in the audit trail.

Priors (issue 14): a task may name earlier studies of the same patient
(``prior_studies``) when the algorithm's manifest asks for priors, at most
its ``max_studies``. Each must have been uploaded by the same hospital and
carry the same pseudonymous Patient ID (0010,0020) as the current study —
the edge pseudonymizes both with the same key, so one patient has one
pseudonym — and none may be the current study. They become the task's
inputs with role ``prior`` beside the ``current`` ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pydicom
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session

from aifi.algorithms.base import Algorithm, Manifest
from aifi.core.tasks import can_move
from aifi.errors import AlgorithmError
from aifi.hub.auditing import audit_log_of, record_on_task
from aifi.hub.catalog import select_version
from aifi.hub.models import INPUT_CURRENT, INPUT_PRIOR, Instance, Result, Task, TaskInput, utcnow
from aifi.hub.storage import ObjectStore
from aifi.hub.subscriptions import covering
from aifi.protocol.schemas import (
    PRIORITY_RANK,
    Acknowledge,
    Priority,
    PriorStudy,
    ResultRef,
    TaskCreate,
    TaskOut,
    TaskState,
)

__all__ = [
    "TaskRefused",
    "acknowledge_task",
    "create_task",
    "find_task",
    "list_tasks",
    "prior_studies_by_task",
    "prior_studies_of",
    "rerun_task",
    "task_out",
]

logger = logging.getLogger(__name__)

TERMINAL = (TaskState.COMPLETED.value, TaskState.CANCELED.value)
_PRIORITY_NAME: dict[int, Priority] = {0: "HIGH", 1: "MEDIUM", 2: "LOW"}  # PRIORITY_RANK


@dataclass(frozen=True)
class TaskRefused:
    """Why a task cannot be created or changed (a value the route turns into 4xx)."""

    status_code: int
    detail: str


def task_out(task: Task, prior_studies: list[PriorStudy] | None = None) -> TaskOut:
    """The API view of a task row; ``prior_studies`` when already loaded (a listing)."""
    return TaskOut(
        id=task.id,
        client_task_id=task.client_task_id,
        algorithm_id=task.algorithm_id,
        algorithm_version=task.algorithm_version,
        study_instance_uid=task.study_instance_uid,
        state=TaskState(task.state),
        reason=task.reason,
        urgent=task.urgent,
        priority=_PRIORITY_NAME.get(task.priority, "MEDIUM"),
        created_at=task.created_at,
        updated_at=task.updated_at,
        acknowledged=task.acknowledged,
        results=[_result_ref(r) for r in task.results],
        findings=task.findings,
        prior_studies=prior_studies_of(task) if prior_studies is None else prior_studies,
    )


def prior_studies_of(task: Task) -> list[PriorStudy]:
    """The task's prior inputs, by study (one indexed query; none for a task not in a session)."""
    session = object_session(task)
    if session is None:
        return []
    rows = session.execute(
        select(Instance.study_instance_uid, Instance.sop_instance_uid)
        .join(TaskInput, TaskInput.instance_id == Instance.id)
        .where(TaskInput.task_id == task.id, TaskInput.role == INPUT_PRIOR)
        .order_by(Instance.id)
    )
    studies: dict[str, list[str]] = {}
    for study_uid, sop_uid in rows:
        studies.setdefault(study_uid, []).append(sop_uid)
    return [
        PriorStudy(study_instance_uid=study, sop_instance_uids=sorted(uids))
        for study, uids in studies.items()
    ]


def prior_studies_by_task(session: Session, task_ids: Sequence[str]) -> dict[str, list[PriorStudy]]:
    """The prior inputs of many tasks in one query (a listing): task id -> its prior studies."""
    if not task_ids:
        return {}
    rows = session.execute(
        select(TaskInput.task_id, Instance.study_instance_uid, Instance.sop_instance_uid)
        .join(Instance, TaskInput.instance_id == Instance.id)
        .where(TaskInput.task_id.in_(task_ids), TaskInput.role == INPUT_PRIOR)
        .order_by(Instance.id)
    )
    by_task: dict[str, dict[str, list[str]]] = {}
    for task_id, study_uid, sop_uid in rows:
        by_task.setdefault(task_id, {}).setdefault(study_uid, []).append(sop_uid)
    return {
        task_id: [
            PriorStudy(study_instance_uid=study, sop_instance_uids=sorted(uids))
            for study, uids in studies.items()
        ]
        for task_id, studies in by_task.items()
    }


def _result_ref(result: Result) -> ResultRef:
    return ResultRef(
        study_instance_uid=result.study_instance_uid,
        series_instance_uid=result.series_instance_uid,
        sop_instance_uid=result.sop_instance_uid,
        sop_class_uid=result.sop_class_uid,
        kind=result.kind,
    )


def find_task(session: Session, hospital_id: str, task_id: str) -> Task | None:
    """The hospital's task ``task_id``, or None (also when it is another hospital's)."""
    return session.scalar(select(Task).where(Task.id == task_id, Task.hospital_id == hospital_id))


def _find_by_client_id(session: Session, hospital_id: str, client_task_id: str) -> Task | None:
    return session.scalar(
        select(Task).where(Task.hospital_id == hospital_id, Task.client_task_id == client_task_id)
    )


def create_task(
    session: Session,
    hospital_id: str,
    request: TaskCreate,
    algorithms: Callable[[str], Algorithm],
    store: ObjectStore | None = None,
) -> tuple[Task, bool] | TaskRefused:
    """Create a SCHEDULED task; ``(task, created)``, or the refusal.

    An existing ``client_task_id`` returns that task with ``created`` False.
    Refusals: 422 for an unknown algorithm or instances this hospital did
    not upload for the study, and for priors the algorithm does not ask for
    or that are not of the same pseudonymous patient (``store`` reads their
    headers); 403 when no subscription covers the task now or the version it
    selects is suspended, retired or not installed.
    """
    existing = _find_by_client_id(session, hospital_id, request.client_task_id)
    if existing is not None:
        return existing, False
    try:
        manifest = algorithms(request.algorithm_id).manifest
    except AlgorithmError as exc:
        return _refuse(session, hospital_id, request, TaskRefused(422, str(exc)))
    subscription = covering(session, hospital_id, request.algorithm_id, utcnow())
    if isinstance(subscription, str):
        return _refuse(session, hospital_id, request, TaskRefused(403, subscription))
    entry = select_version(session, subscription)
    if isinstance(entry, str):
        return _refuse(
            session, hospital_id, request, TaskRefused(403, entry), subscription.agreement_reference
        )
    if entry.version != manifest.version:
        refusal = TaskRefused(
            403,
            f"algorithm {manifest.id} {entry.version} is selected by the subscription but this "
            f"hub runs {manifest.version}; ask the hub operator to update the subscription",
        )
        return _refuse(session, hospital_id, request, refusal, subscription.agreement_reference)
    instances = _uploaded(
        session, hospital_id, request.study_instance_uid, request.sop_instance_uids
    )
    if isinstance(instances, TaskRefused):
        return _refuse(session, hospital_id, request, instances, subscription.agreement_reference)
    priors = _priors(session, hospital_id, request, manifest, instances, store)
    if isinstance(priors, TaskRefused):
        return _refuse(session, hospital_id, request, priors, subscription.agreement_reference)
    task = Task(
        hospital_id=hospital_id,
        client_task_id=request.client_task_id,
        correlation_id=request.correlation_id,
        algorithm_id=manifest.id,
        algorithm_version=manifest.version,
        subscription_id=subscription.id,
        agreement_reference=subscription.agreement_reference,
        study_instance_uid=request.study_instance_uid,
        state=TaskState.SCHEDULED.value,
        priority=PRIORITY_RANK[request.priority],
        inputs=[TaskInput(instance_id=i.id, role=INPUT_CURRENT) for i in instances]
        + [TaskInput(instance_id=i.id, role=INPUT_PRIOR) for i in priors],
    )
    session.add(task)
    try:
        session.flush()  # the task's id, for its event; a twin client_task_id fails here
        record_on_task(
            session,
            "task.created",
            task,
            actor=f"hospital:{hospital_id}",
            detail={
                "instances": len(instances),
                "bytes": sum(i.size for i in instances),
                "subscription": subscription.id,
                "prior_studies": len(request.prior_studies),
                "prior_instances": len(priors),
            },
        )
        session.commit()  # the task and its task.created event, together
    except IntegrityError:  # the same client_task_id arrived twice at once
        session.rollback()
        existing = _find_by_client_id(session, hospital_id, request.client_task_id)
        if existing is None:
            raise
        return existing, False
    logger.info("task %s scheduled: %s on %d instances", task.id, manifest.id, len(instances))
    return task, True


def _uploaded(
    session: Session, hospital_id: str, study_uid: str, sop_instance_uids: Sequence[str]
) -> list[Instance] | TaskRefused:
    """The hospital's unpurged instances of ``study_uid`` named; a refusal when any is missing."""
    wanted = set(sop_instance_uids)
    instances = list(
        session.scalars(
            select(Instance).where(
                Instance.hospital_id == hospital_id,
                Instance.study_instance_uid == study_uid,
                Instance.sop_instance_uid.in_(wanted),
                Instance.purged_at.is_(None),
            )
        )
    )
    missing = wanted - {i.sop_instance_uid for i in instances}
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        return TaskRefused(
            422,
            f"{len(missing)} of {len(wanted)} instances were not uploaded by this hospital "
            f"for study {study_uid} (e.g. {shown}); send them by STOW-RS first",
        )
    return instances


def _priors(
    session: Session,
    hospital_id: str,
    request: TaskCreate,
    manifest: Manifest,
    current: Sequence[Instance],
    store: ObjectStore | None,
) -> list[Instance] | TaskRefused:
    """The prior instances of the request, checked: asked for, uploaded, the same patient."""
    if not request.prior_studies:
        return []
    if manifest.priors is None:
        return TaskRefused(
            422,
            f"algorithm {manifest.id} does not take prior studies; send the task without"
            " prior_studies",
        )
    if len(request.prior_studies) > manifest.priors.max_studies:
        return TaskRefused(
            422,
            f"algorithm {manifest.id} takes at most {manifest.priors.max_studies} prior studies;"
            f" {len(request.prior_studies)} were sent",
        )
    if store is None:
        raise ValueError("create_task needs the object store to check prior studies")
    patient = _patient_pseudonym(store, current[0])
    if not patient:
        return TaskRefused(
            422,
            f"study {request.study_instance_uid} has no pseudonymous Patient ID (0010,0020),"
            " so no prior can be shown to be of the same patient",
        )
    found: list[Instance] = []
    seen: set[str] = {request.study_instance_uid}
    for prior in request.prior_studies:
        if prior.study_instance_uid in seen:
            return TaskRefused(
                422,
                f"prior study {prior.study_instance_uid} is the current study or named twice",
            )
        seen.add(prior.study_instance_uid)
        instances = _uploaded(
            session, hospital_id, prior.study_instance_uid, prior.sop_instance_uids
        )
        if isinstance(instances, TaskRefused):
            return TaskRefused(422, "prior " + instances.detail)
        if _patient_pseudonym(store, instances[0]) != patient:
            return TaskRefused(
                422,
                f"prior study {prior.study_instance_uid} is not of the same pseudonymous patient"
                f" as study {request.study_instance_uid}; priors must be pseudonymized with the"
                " same key as the current study",
            )
        found.extend(instances)
    return found


def _patient_pseudonym(store: ObjectStore, instance: Instance) -> str:
    """Patient ID (0010,0020) of a stored, pseudonymized instance: the patient's pseudonym."""
    with store.open(instance.object_key) as handle:
        ds = pydicom.dcmread(handle, stop_before_pixels=True, specific_tags=["PatientID"])
    return str(ds.get("PatientID", "") or "")


def _refuse(
    session: Session,
    hospital_id: str,
    request: TaskCreate,
    refusal: TaskRefused,
    agreement: str | None = None,
) -> TaskRefused:
    """Record a refused task in the audit trail and hand the refusal back."""
    audit_log_of(session).append(
        "task.refused",
        actor=f"hospital:{hospital_id}",
        hospital=hospital_id,
        algorithm=request.algorithm_id,
        agreement=agreement,
        correlation_id=request.correlation_id,
        detail={
            "status": refusal.status_code,
            "reason": refusal.detail,
            "client_task_id": request.client_task_id,
            "instances": len(request.sop_instance_uids),
        },
    )
    logger.warning("task refused (%d): %s", refusal.status_code, refusal.detail)
    return refusal


def list_tasks(
    session: Session,
    hospital_id: str,
    *,
    state: TaskState | None = None,
    acknowledged: bool | None = None,
    limit: int = 100,
    after: str | None = None,
) -> list[Task]:
    """The hospital's tasks, oldest first; served by the ``ix_tasks_poll`` index.

    ``after`` pages on (keyset): only tasks ordered after that task of the
    hospital; an unknown id gives an empty page.
    """
    query = select(Task).where(Task.hospital_id == hospital_id)
    if after is not None:
        mark = find_task(session, hospital_id, after)
        if mark is None:
            return []
        query = query.where(
            Task.created_at >= mark.created_at,  # the index starts at the mark (db_plans.py)
            or_(
                Task.created_at > mark.created_at,
                and_(Task.created_at == mark.created_at, Task.id > mark.id),
            ),
        )
    if acknowledged is not None:
        query = query.where(Task.acknowledged == acknowledged)
    if state is not None:
        query = query.where(Task.state == state.value)
    return list(session.scalars(query.order_by(Task.created_at, Task.id).limit(limit)))


def acknowledge_task(
    session: Session, hospital_id: str, task_id: str, ack: Acknowledge
) -> Task | TaskRefused:
    """Record that the edge delivered the task's results (idempotent)."""
    task = find_task(session, hospital_id, task_id)
    if task is None:
        return TaskRefused(404, f"no task {task_id} for this hospital")
    if task.state not in TERMINAL:
        return TaskRefused(409, f"task {task_id} is {task.state}; acknowledge it once it has ended")
    known = {r.sop_instance_uid for r in task.results}
    unknown = set(ack.delivered_sop_instance_uids) - known
    if unknown:
        return TaskRefused(
            422, f"{len(unknown)} delivered SOP Instance UIDs are not results of task {task_id}"
        )
    if not task.acknowledged:
        task.acknowledged = True
        task.acknowledged_at = utcnow()
        task.delivered_sop_instance_uids = sorted(ack.delivered_sop_instance_uids)
        record_on_task(
            session,
            "task.acknowledged",
            task,
            actor=f"hospital:{hospital_id}",
            detail={"delivered": len(ack.delivered_sop_instance_uids)},
        )
        session.commit()
        logger.info("task %s acknowledged by the edge", task.id)
    return task


def rerun_task(session: Session, task_id: str, *, actor: str) -> Task | TaskRefused:
    """Schedule a CANCELED task again (an operator's decision); audited as ``task.rerun``.

    Only a canceled task can be re-run: its results were never committed. The
    reason and the lease are cleared and the attempts start again; the task
    keeps its id, so the edge polling it sees it run.
    """
    task = session.get(Task, task_id)
    if task is None:
        return TaskRefused(404, f"no task {task_id}")
    if task.state != TaskState.CANCELED or not can_move(task.state, TaskState.SCHEDULED):
        return TaskRefused(409, f"task {task_id} is {task.state}; only a canceled task is re-run")
    previous = task.reason
    task.state = TaskState.SCHEDULED.value
    task.reason = None
    task.claimed_by = None
    task.lease_until = None
    task.attempts = 0
    task.updated_at = utcnow()
    record_on_task(
        session,
        "task.rerun",
        task,
        actor=actor,
        detail={"previous_reason": previous},
    )
    session.commit()
    logger.info("task %s scheduled again by %s", task.id, actor)
    return task
