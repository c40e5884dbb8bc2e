"""Hub tasks as UPS workitems (PS3.4 Annex CC, PS3.18 §11) for pseudonymized work.

The same task as ``/tasks``, in the shape IHE AIW-I speaks: a DICOM JSON
workitem whose SOP Instance UID is the task's ``client_task_id``, the
algorithm in Scheduled Workitem Code Sequence (0040,4018) (code value =
algorithm id, scheme ``99AIFI``), the pseudonymized study and its instances
in Input Information Sequence (0040,4021), Scheduled Procedure Step
Priority (0074,1200), and once COMPLETED the result objects in Output
Information Sequence (0040,4033). Nothing here carries identity: the hub
only ever holds pseudonymized studies.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from aifi.hub.auditing import audit_log_of
from aifi.hub.models import Task, utcnow
from aifi.hub.tasks import TaskRefused
from aifi.protocol.schemas import PRIORITY_RANK, TaskCreate, TaskState

__all__ = ["SCHEME", "UPS_PUSH", "cancel", "find", "task_create", "workitem_of"]

UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
SCHEME = "99AIFI"
_PRIORITY_NAME = {rank: name for name, rank in PRIORITY_RANK.items()}
_CREATE_KEYS = frozenset(
    {"00080005", "00080016", "00080018", "00741000", "00741200", "00741204", "00741202",
     "00404018", "00404021", "00404041", "00404005", "00404011"}
)  # fmt: skip


def _first(ds: dict[str, Any], tag: str) -> Any:
    values = (ds.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _items(ds: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return [i for i in (ds.get(tag) or {}).get("Value") or [] if isinstance(i, dict)]


def _text(value: Any) -> str:
    return str(value).strip() if value is not None else ""


def task_create(ds: dict[str, Any], uid: str) -> TaskCreate | TaskRefused:
    """The ``/tasks`` request a created workitem stands for, or why it is refused (400)."""
    unknown = sorted(t for t in ds if t.upper() not in _CREATE_KEYS)
    if unknown:
        named = ", ".join(f"({t[:4]},{t[4:]})" for t in unknown)
        return TaskRefused(400, f"attribute {named} is not supported by the hub's workitems")
    if _text(_first(ds, "00741000")) not in ("", "SCHEDULED"):
        return TaskRefused(400, "a workitem is created SCHEDULED (0074,1000)")
    codes = _items(ds, "00404018")
    if len(codes) != 1 or _text(_first(codes[0], "00080102")) != SCHEME:
        return TaskRefused(
            400, f"Scheduled Workitem Code Sequence (0040,4018): one code, scheme {SCHEME!r}"
        )
    inputs = _items(ds, "00404021")
    study = next((s for i in inputs if (s := _text(_first(i, "0020000D")))), "")
    sops = [_text(_first(ref, "00081155")) for i in inputs for ref in _items(i, "00081199")]
    if not study or not all(sops) or not sops:
        return TaskRefused(
            400,
            "Input Information Sequence (0040,4021) names the uploaded study (0020,000D) and its"
            " instances (Referenced SOP Sequence (0008,1199) > (0008,1155))",
        )
    priority = _text(_first(ds, "00741200")) or "MEDIUM"
    if priority not in PRIORITY_RANK:
        return TaskRefused(400, f"priority (0074,1200) {priority!r} is not HIGH, MEDIUM or LOW")
    if len(uid) > 64:
        return TaskRefused(400, "a workitem UID has at most 64 characters (PS3.5 UI)")
    return TaskCreate(
        client_task_id=uid,
        algorithm_id=_text(_first(codes[0], "00080100")),
        study_instance_uid=study,
        sop_instance_uids=sops,
        correlation_id=uid,
        priority=priority,  # type: ignore[arg-type]
    )


def find(session: Session, hospital_id: str, uid: str) -> Task | None:
    """The hospital's task created as workitem ``uid`` (its client_task_id)."""
    return session.scalar(
        select(Task).where(Task.hospital_id == hospital_id, Task.client_task_id == uid)
    )


def workitem_of(task: Task) -> dict[str, Any]:
    """The task as a DICOM JSON workitem (Retrieve, Search)."""
    ds: dict[str, Any] = {
        "00080016": {"vr": "UI", "Value": [UPS_PUSH]},
        "00080018": {"vr": "UI", "Value": [task.client_task_id]},
        "00741000": {"vr": "CS", "Value": [task.state]},
        "00741200": {"vr": "CS", "Value": [_PRIORITY_NAME.get(task.priority, "MEDIUM")]},
        "00404018": {
            "vr": "SQ",
            "Value": [
                {
                    "00080100": {"vr": "SH", "Value": [task.algorithm_id]},
                    "00080102": {"vr": "SH", "Value": [SCHEME]},
                    "00080104": {"vr": "LO", "Value": [task.algorithm_id]},
                }
            ],
        },
        "00404021": {
            "vr": "SQ",
            "Value": [{"0020000D": {"vr": "UI", "Value": [task.study_instance_uid]}}],
        },
    }
    if task.reason:
        ds["00741002"] = {
            "vr": "SQ",
            "Value": [{"00741238": {"vr": "LT", "Value": [task.reason]}}],
        }
    if task.state == TaskState.COMPLETED.value:
        series: dict[str, list[Any]] = {}
        for result in task.results:
            series.setdefault(result.series_instance_uid, []).append(result)
        ds["00741216"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00404033": {
                        "vr": "SQ",
                        "Value": [
                            {
                                "0040E020": {"vr": "CS", "Value": ["DICOM"]},
                                "0020000D": {"vr": "UI", "Value": [members[0].study_instance_uid]},
                                "0020000E": {"vr": "UI", "Value": [series_uid]},
                                "00081199": {
                                    "vr": "SQ",
                                    "Value": [
                                        {
                                            "00081150": {"vr": "UI", "Value": [r.sop_class_uid]},
                                            "00081155": {"vr": "UI", "Value": [r.sop_instance_uid]},
                                        }
                                        for r in members
                                    ],
                                },
                            }
                            for series_uid, members in series.items()
                        ],
                    }
                }
            ],
        }
    return ds


def cancel(session: Session, task: Task, reason: str, *, actor: str) -> Task | TaskRefused:
    """Request Cancellation (PS3.4 CC.2.2): a SCHEDULED task ends CANCELED at once; audited.

    A task a worker already runs is not stopped (409): its results come as usual.
    """
    ended = session.execute(
        update(Task)
        .where(Task.id == task.id, Task.state == TaskState.SCHEDULED.value)
        .values(state=TaskState.CANCELED.value, reason=reason, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if not getattr(ended, "rowcount", 0):
        session.refresh(task)
        return TaskRefused(409, f"workitem {task.client_task_id} is {task.state}; not canceled")
    session.refresh(task)
    audit_log_of(session).append(
        "task.canceled",
        actor=actor,
        hospital=task.hospital_id,
        task=task.id,
        algorithm=task.algorithm_id,
        algorithm_version=task.algorithm_version,
        agreement=task.agreement_reference,
        correlation_id=task.correlation_id,
        detail={"reason": reason},
    )
    return task
