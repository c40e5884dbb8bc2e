"""UPS-RS subscriptions and event reports at the hub (PS3.4 CC.2.3-CC.2.4, PS3.18 §11.10-11.11).

A principal subscribes an AE title of its own (PS3.18 §11.10) to one
workitem, or globally with the well-known UID :data:`GLOBAL_SUBSCRIPTION`
to every workitem it may see: a hospital to its own, an outside performer
to those of the ``outside_algorithms`` (of every hospital; they are
pseudonymized). Suspending the global subscription keeps the workitems it
covered now and adds no new ones (PS3.4 CC.2.3.2); unsubscribing globally
ends every subscription of the AE title.

Event reports (IHE RAD-109, PS3.18 §11.11) go as DICOM JSON over the
WebSocket of the AE title. They come from the database, not from one
process's memory, so the hub may run as several ``aifi hub api``
processes: a :class:`Watcher` per connection polls the task rows it
covers and sends a UPS State Report (Event Type ID 1) for each state it
has not sent yet, and reads the :class:`~aifi.hub.models.UpsEvent` rows
written for what a task row does not show: a UPS Cancel Requested
(Event Type ID 2, PS3.4 Table CC.2.4-1) for a workitem an outside
performer holds, which the performer answers by canceling with its
Transaction UID, or by completing.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, false, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aifi.hub.models import Principal, Task, UpsEvent, UpsSubscription, utcnow
from aifi.protocol.schemas import Role, TaskState

__all__ = [
    "CANCEL_REQUESTED",
    "GLOBAL_SUBSCRIPTION",
    "STATE_REPORT",
    "Watcher",
    "cancel_requests",
    "record_cancel_request",
    "subscribe",
    "suspend",
    "unsubscribe",
]

#: The well-known UID of the global subscription (PS3.4 CC.3.1.4).
GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5"
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
#: Event Type IDs (0000,1002) of PS3.4 Table CC.2.4-1.
STATE_REPORT, CANCEL_REQUESTED = 1, 2
_EVERY = "*"
_FINAL = (TaskState.COMPLETED.value, TaskState.CANCELED.value)
#: task rows are stamped by the clock of whichever process changed them: look back this far
_SKEW = timedelta(seconds=10)
#: the most workitems a global subscription reports on connecting
_INITIAL_LIMIT = 1000

#: what a cancel request may carry (PS3.4 CC.2.2, N-ACTION Request UPS Cancel) → detail key
CANCEL_KEYS = {
    "00741238": "reason",  # Reason For Cancellation
    "0074100E": "reason_codes",  # Procedure Step Discontinuation Reason Code Sequence
    "0074100A": "contact_uri",  # Contact URI
    "0074100C": "contact_name",  # Contact Display Name
    "00741236": "requesting_ae",  # Requesting AE
}
_VR = {"reason": "LT", "contact_uri": "UR", "contact_name": "LO", "requesting_ae": "AE"}


def _visible(principal: Principal, outside: Collection[str]) -> Any:
    """The tasks ``principal`` may subscribe to, as a WHERE clause."""
    if principal.role == Role.PERFORMER.value:
        return Task.algorithm_id.in_(sorted(outside)) if outside else false()
    return Task.hospital_id == principal.hospital_id


def subscribe(session: Session, principal: Principal, ae_title: str, task: Task | None) -> None:
    """Subscribe (PS3.4 CC.2.3.1) ``ae_title`` to ``task``, or globally with None; idempotent."""
    workitem = _EVERY if task is None else task.id
    exists = session.scalar(
        select(UpsSubscription.id).where(
            UpsSubscription.principal_id == principal.id,
            UpsSubscription.ae_title == ae_title,
            UpsSubscription.workitem == workitem,
        )
    )
    if exists is not None:
        return
    session.add(UpsSubscription(principal_id=principal.id, ae_title=ae_title, workitem=workitem))
    try:
        session.commit()
    except IntegrityError:  # the same subscription, made at the same time elsewhere
        session.rollback()


def unsubscribe(session: Session, principal: Principal, ae_title: str, task: Task | None) -> None:
    """Unsubscribe (PS3.4 CC.2.3.2) from ``task``; None ends every subscription of the AE."""
    where = [UpsSubscription.principal_id == principal.id, UpsSubscription.ae_title == ae_title]
    if task is not None:
        where.append(UpsSubscription.workitem == task.id)
    session.execute(delete(UpsSubscription).where(*where))
    session.commit()


def suspend(
    session: Session, principal: Principal, ae_title: str, outside: Collection[str]
) -> None:
    """Suspend Global Subscription (PS3.4 CC.2.3.2): keep today's open workitems, add no more."""
    covered = session.execute(
        delete(UpsSubscription).where(
            UpsSubscription.principal_id == principal.id,
            UpsSubscription.ae_title == ae_title,
            UpsSubscription.workitem == _EVERY,
        )
    )
    if getattr(covered, "rowcount", 0):
        held = set(
            session.scalars(
                select(UpsSubscription.workitem).where(
                    UpsSubscription.principal_id == principal.id,
                    UpsSubscription.ae_title == ae_title,
                )
            )
        )
        for task_id in session.scalars(
            select(Task.id).where(_visible(principal, outside), Task.state.not_in(_FINAL))
        ):
            if task_id not in held:
                session.add(
                    UpsSubscription(principal_id=principal.id, ae_title=ae_title, workitem=task_id)
                )
    session.commit()


def record_cancel_request(session: Session, task: Task, detail: dict[str, Any]) -> UpsEvent:
    """Keep a cancel request for its subscribers' WebSockets (UPS Cancel Requested). Commits."""
    event = UpsEvent(
        task_id=task.id,
        hospital_id=task.hospital_id,
        event_type=CANCEL_REQUESTED,
        detail={**detail, "requested_at": utcnow().strftime("%Y%m%d%H%M%S")},
    )
    session.add(event)
    session.commit()
    return event


def cancel_requests(session: Session, task_ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """The latest cancel request of each task that has one, by task id."""
    if not task_ids:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for event in session.scalars(
        select(UpsEvent)
        .where(UpsEvent.task_id.in_(sorted(task_ids)), UpsEvent.event_type == CANCEL_REQUESTED)
        .order_by(UpsEvent.id)
    ):
        found[event.task_id] = dict(event.detail)
    return found


def _attr(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def _report(uid: str, event_type: int) -> dict[str, Any]:
    return {
        "00000002": _attr("UI", UPS_PUSH),  # Affected SOP Class UID
        "00001000": _attr("UI", uid),  # Affected SOP Instance UID
        "00001002": _attr("US", event_type),  # Event Type ID
    }


def state_report(uid: str, state: str, reason: str | None) -> dict[str, Any]:
    """A UPS State Report (PS3.4 Table CC.2.4-1, Event Type ID 1) as DICOM JSON."""
    report = _report(uid, STATE_REPORT)
    report["00741000"] = _attr("CS", state)  # Procedure Step State
    report["00404041"] = _attr("CS", "READY")  # Input Readiness State
    if state == TaskState.CANCELED.value and reason:
        report["00741238"] = _attr("LT", reason)
    return report


def cancel_requested_report(uid: str, detail: dict[str, Any]) -> dict[str, Any]:
    """A UPS Cancel Requested report (PS3.4 Table CC.2.4-1, Event Type ID 2) as DICOM JSON."""
    report = _report(uid, CANCEL_REQUESTED)
    for tag, key in CANCEL_KEYS.items():
        value = detail.get(key)
        if value and key in _VR:
            report[tag] = _attr(_VR[key], value)
        elif value:  # the code sequence, as the requester gave it
            report[tag] = {"vr": "SQ", "Value": value}
    return report


@dataclass
class Watcher:
    """What one WebSocket of ``ae_title`` has been sent; :meth:`poll` gives what it has not."""

    principal: Principal
    ae_title: str
    outside: Collection[str]
    sent: dict[str, str] = field(default_factory=dict)
    last_event: int | None = None
    since: datetime | None = None

    def poll(self, session: Session) -> list[dict[str, Any]]:
        """The reports due now: cancel requests first, then each state not yet sent."""
        started = utcnow()
        workitems = set(
            session.scalars(
                select(UpsSubscription.workitem).where(
                    UpsSubscription.principal_id == self.principal.id,
                    UpsSubscription.ae_title == self.ae_title,
                )
            )
        )
        every = _EVERY in workitems
        ids = sorted(workitems - {_EVERY})
        if not workitems:
            self.since = started
            return []
        covered: list[Any] = [Task.id.in_(ids)] if ids else []
        if every:
            if self.since is None:  # on connecting: the open workitems (PS3.4 CC.2.3.1)
                covered.append(Task.state.not_in(_FINAL))
            else:
                covered.append(Task.updated_at >= self.since - _SKEW)
        visible = _visible(self.principal, self.outside)
        reports = self._cancel_requests(session, visible, every, ids)
        rows = session.execute(
            select(Task.id, Task.client_task_id, Task.state, Task.reason)
            .where(visible, or_(*covered))
            .order_by(Task.updated_at, Task.id)
            .limit(_INITIAL_LIMIT)
        ).all()
        for task_id, uid, state, reason in rows:
            before = self.sent.get(task_id)
            if before == state:
                continue
            if before == TaskState.SCHEDULED.value and state == TaskState.COMPLETED.value:
                reports.append(state_report(uid, TaskState.IN_PROGRESS.value, None))
            reports.append(state_report(uid, state, reason))
            self.sent[task_id] = state
        self.since = started
        return reports

    def _cancel_requests(
        self, session: Session, visible: Any, every: bool, ids: list[str]
    ) -> list[dict[str, Any]]:
        query = (
            select(UpsEvent.id, Task.client_task_id, UpsEvent.detail)
            .join(Task, Task.id == UpsEvent.task_id)
            .where(UpsEvent.event_type == CANCEL_REQUESTED, visible)
            .order_by(UpsEvent.id)
        )
        if not every:
            query = query.where(Task.id.in_(ids))
        if self.last_event is None:  # on connecting: the requests still open
            newest = session.scalar(select(UpsEvent.id).order_by(UpsEvent.id.desc()).limit(1))
            self.last_event = newest or 0
            query = query.where(
                UpsEvent.id <= self.last_event, Task.state == TaskState.IN_PROGRESS.value
            )
        else:
            query = query.where(UpsEvent.id > self.last_event)
        reports = []
        for event_id, uid, detail in session.execute(query).all():
            reports.append(cancel_requested_report(uid, dict(detail)))
            self.last_event = max(self.last_event, event_id)
        return reports
