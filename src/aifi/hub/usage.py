"""Usage for joint procurement: per hospital by algorithm by month.

Figures come from the hub's own tables, which keep their rows after
retention deletes the objects: tasks (by the month they were created),
their input instances (count and bytes received), their results (bytes
sent back), compute seconds recorded by the runner, outcomes, and refused
tasks counted from the audit trail.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, case, distinct, func, select
from sqlalchemy.orm import Session

from aifi.errors import ConfigError
from aifi.hub.models import AUDIT_TABLES, Hospital, Instance, Result, Task, TaskInput
from aifi.protocol.schemas import TaskState, UsageRow

__all__ = ["month_bounds", "usage", "usage_csv"]

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The first instant of ``YYYY-MM`` and of the month after, in UTC."""
    match = _MONTH.match(month)
    if match is None:
        raise ConfigError(f"month {month!r} is not YYYY-MM (e.g. 2026-11)")
    year, number = int(match[1]), int(match[2])
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end


def usage(session: Session, month: str) -> list[UsageRow]:
    """One row per hospital and algorithm with any task or refusal in ``month``."""
    start, end = month_bounds(month)
    in_month = (Task.created_at >= start, Task.created_at < end)
    key = (Task.hospital_id, Task.algorithm_id)
    rows: dict[tuple[str, str], dict[str, object]] = {}

    def row(hospital_id: str, algorithm_id: str) -> dict[str, object]:
        return rows.setdefault(
            (hospital_id, algorithm_id),
            {
                "studies": 0,
                "instances": 0,
                "bytes_in": 0,
                "bytes_out": 0,
                "compute_seconds": 0.0,
                "completed": 0,
                "canceled": 0,
                "pending": 0,
                "refused": 0,
                "versions": set(),
            },
        )

    def count(state: TaskState) -> ColumnElement[int]:
        return func.sum(case((Task.state == state.value, 1), else_=0))

    tasks = session.execute(
        select(
            *key,
            func.count(distinct(Task.study_instance_uid)),
            func.coalesce(func.sum(Task.compute_seconds), 0.0),
            count(TaskState.COMPLETED),
            count(TaskState.CANCELED),
            func.count(Task.id),
        )
        .where(*in_month)
        .group_by(*key)
    )
    for hospital_id, algorithm_id, studies, seconds, completed, canceled, total in tasks:
        r = row(hospital_id, algorithm_id)
        r.update(
            studies=studies,
            compute_seconds=float(seconds or 0.0),
            completed=int(completed or 0),
            canceled=int(canceled or 0),
            pending=int(total) - int(completed or 0) - int(canceled or 0),
        )
    inputs = session.execute(
        select(*key, func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0))
        .join(TaskInput, TaskInput.task_id == Task.id)
        .join(Instance, Instance.id == TaskInput.instance_id)
        .where(*in_month)
        .group_by(*key)
    )
    for hospital_id, algorithm_id, instances, size in inputs:
        row(hospital_id, algorithm_id).update(instances=int(instances), bytes_in=int(size))
    outputs = session.execute(
        select(*key, func.coalesce(func.sum(Result.size), 0))
        .join(Result, Result.task_id == Task.id)
        .where(*in_month)
        .group_by(*key)
    )
    for hospital_id, algorithm_id, size in outputs:
        row(hospital_id, algorithm_id)["bytes_out"] = int(size)
    versions = session.execute(select(*key, Task.algorithm_version).where(*in_month).distinct())
    for hospital_id, algorithm_id, version in versions:
        if version:
            versions_of = row(hospital_id, algorithm_id)["versions"]
            assert isinstance(versions_of, set)
            versions_of.add(version)
    events = AUDIT_TABLES.events
    refused = session.execute(
        select(events.c.hospital, events.c.algorithm, func.count())
        .where(
            events.c.action == "task.refused",
            events.c.at >= start.isoformat(),
            events.c.at < end.isoformat(),
            events.c.hospital.is_not(None),
            events.c.algorithm.is_not(None),
        )
        .group_by(events.c.hospital, events.c.algorithm)
    )
    for hospital_id, algorithm_id, refusals in refused:
        row(hospital_id, algorithm_id)["refused"] = int(refusals)
    names = {i: n for i, n in session.execute(select(Hospital.id, Hospital.name))}
    return [
        UsageRow(
            month=month,
            hospital_id=hospital_id,
            hospital=names.get(hospital_id, ""),
            algorithm_id=algorithm_id,
            algorithm_versions=sorted(values.pop("versions")),  # type: ignore[call-overload]
            **values,  # type: ignore[arg-type]
        )
        for (hospital_id, algorithm_id), values in sorted(
            rows.items(), key=lambda item: (names.get(item[0][0], ""), item[0])
        )
    ]


def usage_csv(rows: Sequence[UsageRow]) -> str:
    """The rows as CSV with a header line (versions joined by spaces)."""
    fields = list(UsageRow.model_fields)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        record = r.model_dump()
        record["algorithm_versions"] = " ".join(r.algorithm_versions)
        record["compute_seconds"] = f"{r.compute_seconds:.3f}"
        writer.writerow(record)
    return out.getvalue()
