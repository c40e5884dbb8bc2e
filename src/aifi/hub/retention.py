"""Retention: the hub keeps images only as long as it needs them, results for a period.

* An input instance is deleted from storage as soon as every task that
  used it has been acknowledged by the edge (results are in PACS): right
  after the acknowledgement, by the acknowledge request itself.
* Any input instance older than ``retention_images_max_hours`` (default 24)
  is deleted at the next purge even without an acknowledgement, unless a
  task that uses it is still scheduled or running.
* Result objects are deleted ``retention_results_days`` (default 30) after
  they were made, acknowledged or not.

Rows stay (marked ``purged_at``) so usage figures and the audit trail keep
their counts and sizes; only the DICOM objects go. Every purge that deleted
something is audited, one event per hospital and kind. The janitor
(:mod:`aifi.hub.janitor`) runs :func:`purge` every ``purge_interval_s``;
``aifi hub purge`` runs it once.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Exists, Select, and_, exists, or_, select
from sqlalchemy.orm import Session

from aifi.hub.auditing import SYSTEM_ACTOR, record
from aifi.hub.config import HubSettings
from aifi.hub.models import Instance, Result, Task, TaskInput, utcnow
from aifi.hub.storage import ObjectStore
from aifi.protocol.schemas import TaskState

__all__ = [
    "PurgeReport",
    "images_to_purge",
    "purge",
    "purge_acknowledged",
    "results_to_purge",
]

logger = logging.getLogger(__name__)

_ACTIVE = (TaskState.SCHEDULED.value, TaskState.IN_PROGRESS.value)


@dataclass(frozen=True)
class PurgeReport:
    """What one purge deleted."""

    images: int = 0
    image_bytes: int = 0
    results: int = 0
    result_bytes: int = 0


def _linked(*conditions: ColumnElement[bool]) -> Exists:
    return exists().where(
        TaskInput.instance_id == Instance.id, TaskInput.task_id == Task.id, *conditions
    )


def images_to_purge(image_cutoff: datetime) -> Select[Instance]:
    """Input instances still stored whose every task was acknowledged, or older than the cutoff.

    Planned on a million rows (``bench/db_plans.py``): the partial index
    ``ix_instances_unpurged`` reads only what is still stored, and
    ``ix_task_inputs_instance`` answers "which tasks use this instance".
    """
    acknowledged = and_(
        _linked(Task.acknowledged.is_(True)), ~_linked(Task.acknowledged.is_(False))
    )
    too_old = and_(Instance.received_at < image_cutoff, ~_linked(Task.state.in_(_ACTIVE)))
    return select(Instance).where(Instance.purged_at.is_(None), or_(acknowledged, too_old))


def results_to_purge(result_cutoff: datetime) -> Select[Result]:
    """Result objects still stored that were made before the cutoff (``ix_results_unpurged``)."""
    return select(Result).where(Result.purged_at.is_(None), Result.created_at < result_cutoff)


def purge(
    session: Session, store: ObjectStore, settings: HubSettings, *, now: datetime | None = None
) -> PurgeReport:
    """Delete what retention allows, for every hospital; audited."""
    now = now or utcnow()
    image_cutoff = now - timedelta(hours=settings.retention_images_max_hours)
    images = list(session.scalars(images_to_purge(image_cutoff)))
    reasons = {i.id: "acknowledged" if i.received_at >= image_cutoff else "max_age" for i in images}
    image_count, image_bytes = _purge_images(session, store, images, reasons, now)
    result_cutoff = now - timedelta(days=settings.retention_results_days)
    results = list(session.scalars(results_to_purge(result_cutoff)))
    result_bytes = _purge_results(session, store, results, now)
    return PurgeReport(image_count, image_bytes, len(results), result_bytes)


def purge_acknowledged(session: Session, store: ObjectStore, task: Task) -> int:
    """Delete the inputs of ``task`` that no unacknowledged task still needs; how many."""
    images = list(
        session.scalars(
            select(Instance)
            .join(TaskInput, TaskInput.instance_id == Instance.id)
            .where(
                TaskInput.task_id == task.id,
                Instance.purged_at.is_(None),
                ~_linked(Task.acknowledged.is_(False)),
            )
        )
    )
    count, _ = _purge_images(
        session, store, images, dict.fromkeys((i.id for i in images), "acknowledged"), utcnow()
    )
    return count


def _purge_images(
    session: Session,
    store: ObjectStore,
    images: list[Instance],
    reasons: dict[int, str],
    now: datetime,
) -> tuple[int, int]:
    if not images:
        return 0, 0
    for instance in images:
        store.delete(instance.object_key)
        instance.purged_at = now
    by_hospital: dict[str, list[Instance]] = defaultdict(list)
    for instance in images:
        by_hospital[instance.hospital_id].append(instance)
    for hospital_id, purged in sorted(by_hospital.items()):
        record(
            session,
            "purge.images",
            actor=SYSTEM_ACTOR,
            hospital=hospital_id,
            detail={
                "instances": len(purged),
                "bytes": sum(i.size for i in purged),
                "studies": len({i.study_instance_uid for i in purged}),
                "reasons": dict(Counter(reasons[i.id] for i in purged)),
            },
        )
    session.commit()  # purged_at and the purge events, together
    logger.info("retention: deleted %d input instances", len(images))
    return len(images), sum(i.size for i in images)


def _purge_results(
    session: Session, store: ObjectStore, results: list[Result], now: datetime
) -> int:
    if not results:
        return 0
    for result in results:
        store.delete(result.object_key)
        result.purged_at = now
    by_hospital: dict[str, list[Result]] = defaultdict(list)
    for result in results:
        by_hospital[result.hospital_id].append(result)
    for hospital_id, purged in sorted(by_hospital.items()):
        record(
            session,
            "purge.results",
            actor=SYSTEM_ACTOR,
            hospital=hospital_id,
            detail={
                "objects": len(purged),
                "bytes": sum(r.size for r in purged),
                "tasks": sorted({r.task_id for r in purged}),
                "unacknowledged": sum(1 for r in purged if not r.task.acknowledged),
            },
        )
    session.commit()
    logger.info("retention: deleted %d result objects", len(results))
    return sum(r.size for r in results)
