"""What the console's pages show, read from the hub's tables for one viewer's scope.

Every function takes ``hospital_id``: None for operators and auditors (all
hospitals), a hospital's id for its own administrators -- and then every
query filters on it, as the API's hospital routes do.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aifi.hub.contacts import edge_version
from aifi.hub.drift import is_positive
from aifi.hub.leases import QUEUE_ORDER
from aifi.hub.models import AUDIT_TABLES, Hospital, HospitalContact, Refusal, Task
from aifi.protocol.schemas import PRIORITY_RANK, TaskState

__all__ = [
    "ChartData",
    "HospitalRow",
    "TimelineStep",
    "chart_data",
    "hospital_rows",
    "list_refusals",
    "priority_name",
    "queue_rows",
    "state_counts",
    "task_timeline",
    "tasks_page",
]

OPEN = (TaskState.SCHEDULED.value, TaskState.IN_PROGRESS.value)


@dataclass(frozen=True)
class HospitalRow:
    id: str
    name: str
    last_contact: datetime | None
    edge_version: str | None
    open_tasks: int
    failed_tasks: int
    completed_tasks: int


@dataclass(frozen=True)
class TimelineStep:
    at: datetime
    what: str
    detail: str
    actor: str


def hospital_rows(session: Session, hospital_id: str | None) -> list[HospitalRow]:
    """Hospitals with their edge's last contact and version, open and failed tasks."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    query = select(Task.hospital_id, Task.state, func.count()).group_by(
        Task.hospital_id, Task.state
    )
    if hospital_id is not None:
        query = query.where(Task.hospital_id == hospital_id)
    for hid, state, count in session.execute(query):
        counts[hid][state] = int(count)
    hospitals = select(Hospital, HospitalContact).outerjoin(
        HospitalContact, HospitalContact.hospital_id == Hospital.id
    )
    if hospital_id is not None:
        hospitals = hospitals.where(Hospital.id == hospital_id)
    rows = []
    for hospital, contact in session.execute(hospitals.order_by(Hospital.name)):
        c = counts[hospital.id]
        rows.append(
            HospitalRow(
                id=hospital.id,
                name=hospital.name,
                last_contact=contact.last_seen_at if contact else None,
                edge_version=edge_version(contact.user_agent) if contact else None,
                open_tasks=sum(c[s] for s in OPEN),
                failed_tasks=c[TaskState.CANCELED.value],
                completed_tasks=c[TaskState.COMPLETED.value],
            )
        )
    return rows


def tasks_page(
    session: Session,
    hospital_id: str | None,
    *,
    state: str | None = None,
    algorithm_id: str | None = None,
    hospital: str | None = None,
    day_from: date | None = None,
    day_to: date | None = None,
    limit: int = 200,
) -> list[tuple[Task, str]]:
    """Tasks newest first with their hospital's name, filtered."""
    query = select(Task, Hospital.name).join(Hospital, Hospital.id == Task.hospital_id)
    if hospital_id is not None:
        query = query.where(Task.hospital_id == hospital_id)
    if hospital:
        query = query.where(Task.hospital_id == hospital)
    if state:
        query = query.where(Task.state == state)
    if algorithm_id:
        query = query.where(Task.algorithm_id == algorithm_id)
    if day_from is not None:
        query = query.where(Task.created_at >= _start_of(day_from))
    if day_to is not None:
        query = query.where(Task.created_at < _start_of(day_to) + timedelta(days=1))
    query = query.order_by(Task.created_at.desc(), Task.id).limit(limit)
    return [(task, name) for task, name in session.execute(query)]


_PRIORITY_NAMES = {rank: name for name, rank in PRIORITY_RANK.items()}


def priority_name(rank: int) -> str:
    """HIGH, MEDIUM or LOW: the Scheduled Procedure Step Priority (0074,1200) of a rank."""
    return _PRIORITY_NAMES.get(rank, str(rank))


def queue_rows(
    session: Session, hospital_id: str | None, *, limit: int = 200
) -> tuple[list[tuple[Task, str]], list[tuple[Task, str]]]:
    """The tasks running now and those waiting, each in the order workers take them.

    Waiting tasks are sorted by :data:`aifi.hub.leases.QUEUE_ORDER`, the
    order of ``claim_next`` itself, so the page cannot disagree with the workers.
    """
    base = select(Task, Hospital.name).join(Hospital, Hospital.id == Task.hospital_id)
    if hospital_id is not None:
        base = base.where(Task.hospital_id == hospital_id)
    running = base.where(Task.state == TaskState.IN_PROGRESS.value).order_by(*QUEUE_ORDER)
    waiting = base.where(Task.state == TaskState.SCHEDULED.value).order_by(*QUEUE_ORDER)
    return (
        [(task, name) for task, name in session.execute(running.limit(limit))],
        [(task, name) for task, name in session.execute(waiting.limit(limit))],
    )


_STEPS = {
    "task.created": "received at hub",
    "run.started": "started",
    "results.made": "results made",
    "run.completed": "completed",
    "run.canceled": "canceled",
    "task.rerun": "re-run requested",
    "task.acknowledged": "acknowledged by the edge",
    "feedback.recorded": "reader's verdict",
    "purge.images": "images deleted",
    "purge.results": "results deleted",
}


def task_timeline(session: Session, task: Task) -> list[TimelineStep]:
    """The task's steps from its audit trail, with the task row's times where no event is."""
    events = AUDIT_TABLES.events
    pending = AUDIT_TABLES.pending
    unsealed = []  # committed with their change, not sealed yet: read first, none missed
    if pending is not None:
        unsealed = list(
            session.execute(
                select(pending.c.at, pending.c.action, pending.c.actor, pending.c.detail)
                .where(pending.c.task == task.id, pending.c.hospital == task.hospital_id)
                .order_by(pending.c.id)
            )
        )
    rows = list(
        session.execute(
            select(events.c.at, events.c.action, events.c.actor, events.c.detail)
            .where(events.c.task == task.id, events.c.hospital == task.hospital_id)
            .order_by(events.c.seq)
        )
    )
    sealed = {tuple(r) for r in rows}  # sealed between the two reads: shown once
    rows += [r for r in unsealed if tuple(r) not in sealed]
    steps = []
    for at, action, actor, detail in rows:
        steps.append(
            TimelineStep(
                at=datetime.fromisoformat(at),
                what=_STEPS.get(action, action),
                detail=_detail_text(action, detail),
                actor=actor,
            )
        )
    if not any(s.what == "received at hub" for s in steps):
        steps.insert(0, TimelineStep(task.created_at, "received at hub", "", ""))
    if task.acknowledged_at and not any(s.what.startswith("acknowledged") for s in steps):
        steps.append(TimelineStep(task.acknowledged_at, "acknowledged by the edge", "", ""))
    return steps


def _detail_text(action: str, raw: str) -> str:
    try:
        detail: dict[str, Any] = json.loads(raw)
    except ValueError:
        return ""
    if action == "run.canceled":
        return str(detail.get("reason", ""))
    if action == "task.rerun":
        return f"earlier reason: {detail.get('previous_reason')}"
    if action == "run.completed":
        seconds = detail.get("compute_seconds")
        urgent = " (urgent)" if detail.get("urgent") else ""
        return f"{seconds:.2f} s of compute{urgent}" if isinstance(seconds, float) else ""
    if action == "results.made":
        return f"{detail.get('objects')} objects: {', '.join(detail.get('kinds', []))}"
    if action == "feedback.recorded":
        correction = detail.get("correction")
        return str(detail.get("verdict", "")) + (f", correction {correction}" if correction else "")
    if action == "task.created":
        return f"{detail.get('instances')} instances"
    return ", ".join(f"{k} {v}" for k, v in sorted(detail.items()))[:200]


def list_refusals(
    session: Session, hospital_id: str | None, *, limit: int = 200
) -> list[tuple[Refusal, str]]:
    """STOW-RS refusals newest first, with the hospital's name."""
    query = select(Refusal, Hospital.name).join(Hospital, Hospital.id == Refusal.hospital_id)
    if hospital_id is not None:
        query = query.where(Refusal.hospital_id == hospital_id)
    query = query.order_by(Refusal.created_at.desc(), Refusal.id.desc()).limit(limit)
    return [(r, name) for r, name in session.execute(query)]


@dataclass
class ChartData:
    """Daily series for the console's charts."""

    days: list[date]
    turnaround: dict[str, dict[date, tuple[float, float]]]  # algorithm -> day -> (p50, p95)
    per_hospital: dict[str, dict[date, int]]  # hospital name -> day -> tasks
    failure_rate: dict[date, float]
    positive_rate: dict[tuple[str, str], tuple[int, int]]  # (hospital, algorithm) -> (pos, n)


def chart_data(
    session: Session, hospital_id: str | None, *, days: int = 30, now: datetime | None = None
) -> ChartData:
    """The last ``days`` days of tasks as the charts need them."""
    now = now or datetime.now(UTC)
    first = _start_of(now.date() - timedelta(days=days - 1))
    day_list = [first.date() + timedelta(days=i) for i in range(days)]
    query = (
        select(Task.created_at, Task.state, Task.algorithm_id, Hospital.name, Task.findings)
        .join(Hospital, Hospital.id == Task.hospital_id)
        .where(Task.created_at >= first)
    )
    if hospital_id is not None:
        query = query.where(Task.hospital_id == hospital_id)
    per_hospital: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    ended: dict[date, list[bool]] = defaultdict(list)
    positive: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for created_at, state, algorithm_id, name, findings in session.execute(query):
        day = created_at.date()
        per_hospital[name][day] += 1
        if state in (TaskState.COMPLETED.value, TaskState.CANCELED.value):
            ended[day].append(state == TaskState.CANCELED.value)
        if state == TaskState.COMPLETED.value:
            cell = positive[(name, algorithm_id)]
            cell[0] += is_positive(findings)
            cell[1] += 1
    return ChartData(
        days=day_list,
        turnaround=_turnaround(session, hospital_id, first),
        per_hospital={k: dict(v) for k, v in sorted(per_hospital.items())},
        failure_rate={d: sum(v) / len(v) for d, v in sorted(ended.items()) if v},
        positive_rate={k: (v[0], v[1]) for k, v in sorted(positive.items())},
    )


def _turnaround(
    session: Session, hospital_id: str | None, first: datetime
) -> dict[str, dict[date, tuple[float, float]]]:
    events = AUDIT_TABLES.events
    query = (
        select(Task.algorithm_id, Task.created_at, func.max(events.c.at))
        .join(events, events.c.task == Task.id)
        .where(events.c.action == "run.completed", Task.created_at >= first)
        .group_by(Task.id, Task.algorithm_id, Task.created_at)
    )
    if hospital_id is not None:
        query = query.where(Task.hospital_id == hospital_id)
    samples: dict[str, dict[date, list[float]]] = defaultdict(lambda: defaultdict(list))
    for algorithm_id, created_at, ended in session.execute(query):
        seconds = (datetime.fromisoformat(ended) - created_at).total_seconds()
        samples[algorithm_id][created_at.date()].append(max(0.0, seconds))
    return {
        algorithm: {
            day: (_quantile(values, 0.5), _quantile(values, 0.95))
            for day, values in sorted(by_day.items())
        }
        for algorithm, by_day in sorted(samples.items())
    }


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (p50, p95) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, -(-int(q * 1000) * len(ordered) // 1000))  # ceil(q * n)
    return ordered[min(rank, len(ordered)) - 1]


def _start_of(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def state_counts(session: Session, hospital_id: str | None) -> dict[str, int]:
    """Tasks per state (for the overview)."""
    query = select(Task.state, func.count()).group_by(Task.state)
    if hospital_id is not None:
        query = query.where(Task.hospital_id == hospital_id)
    counts = {s.value: 0 for s in TaskState}
    counts.update({state: int(n) for state, n in session.execute(query)})
    return counts
