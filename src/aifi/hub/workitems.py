"""Hub tasks as UPS workitems (PS3.4 Annex CC, PS3.18 §11) for pseudonymized work.

The same task as ``/tasks``, in the shape IHE AIW-I speaks: a DICOM JSON
workitem whose SOP Instance UID is the task's ``client_task_id``, the
algorithm in Scheduled Workitem Code Sequence (0040,4018) (code value =
algorithm id, scheme ``99AIFI``), the pseudonymized study and its instances
in Input Information Sequence (0040,4021), Scheduled Procedure Step
Priority (0074,1200), and once COMPLETED the result objects in Output
Information Sequence (0040,4033). Nothing here carries identity: the hub
only ever holds pseudonymized studies.

An *outside performer* (a principal of role ``performer``, e.g. a vendor's
remote runner) performs the workitems of the algorithms named in the
``outside_algorithms`` setting, which the hub's own workers never take
(:func:`aifi.hub.leases.claim_next` excludes them). It follows PS3.4 CC.2.1
(N-ACTION Change UPS State) as PS3.18 §11.7 carries it: it claims a
SCHEDULED workitem with a Transaction UID (0008,1195) of its own; the claim
is a lease like a worker's (``claimed_by`` = ``performer:<principal id>:<Transaction
UID>``), renewed by every Update (PS3.18 §11.6), so the janitor re-queues
a workitem whose performer went silent for ``performer_lease_s``; it ends
the workitem COMPLETED or CANCELED with the same Transaction UID. The
Transaction UID is never returned by Retrieve or Search (PS3.4 CC.2.5.1.2).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from aifi.algorithms.base import Algorithm
from aifi.algorithms.findings_json import findings_from_json, findings_on, findings_to_json
from aifi.dicom import status
from aifi.errors import AifiError
from aifi.hub import ups_events
from aifi.hub.auditing import record_on_task
from aifi.hub.leases import claim, fence, renew
from aifi.hub.models import INPUT_PRIOR, Result, Task, utcnow
from aifi.hub.performed import current_inputs, discard, make_results
from aifi.hub.storage import ObjectStore
from aifi.hub.tasks import TaskRefused
from aifi.protocol.schemas import PRIORITY_RANK, Role, TaskCreate, TaskState

__all__ = [
    "SCHEME",
    "UPS_PUSH",
    "CancelAccepted",
    "StateChanged",
    "cancel",
    "change_state",
    "find",
    "find_for_performer",
    "hand_in",
    "input_keys",
    "performable",
    "performer_update",
    "task_create",
    "workitem_of",
]

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


def _input_item(
    study: str, sops: list[tuple[str, str]], retrieve_url: str | None
) -> dict[str, Any]:
    """One Input Information Sequence item (PS3.4 Table CC.2.5-3): a study and its instances."""
    item: dict[str, Any] = {
        "0020000D": {"vr": "UI", "Value": [study]},
        "0040E020": {"vr": "CS", "Value": ["DICOM"]},
        "00081199": {
            "vr": "SQ",
            "Value": [
                {
                    **({"00081150": {"vr": "UI", "Value": [sop_class]}} if sop_class else {}),
                    "00081155": {"vr": "UI", "Value": [sop]},
                }
                for sop_class, sop in sops
            ],
        },
    }
    if retrieve_url is not None:  # Retrieve URL (0008,1190): WADO-RS of this study's inputs
        item["00081190"] = {"vr": "UR", "Value": [f"{retrieve_url}/studies/{study}"]}
    return item


def _priors(task: Task) -> dict[str, list[tuple[str, str]]]:
    """(SOP Class, SOP Instance UID) of the task's prior inputs, by study, in upload order."""
    studies: dict[str, list[tuple[str, str]]] = {}
    for link in sorted(task.inputs, key=lambda link: link.instance_id):
        if link.role == INPUT_PRIOR:
            i = link.instance
            studies.setdefault(i.study_instance_uid, []).append(
                (i.sop_class_uid, i.sop_instance_uid)
            )
    return studies


def workitem_of(
    task: Task,
    *,
    retrieve_url: str | None = None,
    cancel_request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The task as a DICOM JSON workitem (Retrieve, Search).

    ``cancel_request`` (:func:`aifi.hub.ups_events.cancel_requests`): a
    cancellation asked for while IN PROGRESS shows in UPS Progress
    Information Sequence (0074,1002) with its date and time (0040,4052),
    reason (0074,1238) and contact (0074,100A / 0074,100C).

    ``retrieve_url`` (the performer's view): each Input Information Sequence
    item carries its Retrieve URL (0008,1190) under it,
    ``{retrieve_url}/studies/{study}`` (:func:`input_keys`).
    """
    current = [(i.sop_class_uid, i.sop_instance_uid) for i in current_inputs(task)]
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
        "00404021": {  # the task's study first, then its priors (issue 14), each with its SOPs
            "vr": "SQ",
            "Value": [_input_item(task.study_instance_uid, current, retrieve_url)]
            + [_input_item(study, sops, retrieve_url) for study, sops in _priors(task).items()],
        },
    }
    progress: dict[str, Any] = {}
    if task.reason:  # progress description while IN PROGRESS, else the reason
        said = "00741006" if task.state == TaskState.IN_PROGRESS.value else "00741238"
        progress[said] = {"vr": "ST" if said == "00741006" else "LT", "Value": [task.reason]}
    if cancel_request is not None and task.state == TaskState.IN_PROGRESS.value:
        progress.update(_requested(cancel_request))  # asked for, not yet decided (PS3.4 CC.2.2)
    if progress:
        ds["00741002"] = {"vr": "SQ", "Value": [progress]}
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


@dataclass(frozen=True)
class CancelAccepted:
    """A Request Cancellation the hub accepted (202), with its PS3.18 §11.8.3 warning if any.

    ``requested``: the workitem is IN PROGRESS at an outside performer, which
    was told (UPS Cancel Requested) and decides; else it is CANCELED now.
    """

    task: Task
    requested: bool = False
    warning: str | None = None


def _requested(detail: dict[str, Any]) -> dict[str, Any]:
    """The Progress Information of a pending cancel request (PS3.4 Table CC.2.5-3)."""
    shown: dict[str, Any] = {}
    if detail.get("requested_at"):
        shown["00404052"] = {"vr": "DT", "Value": [detail["requested_at"]]}
    if detail.get("reason"):
        shown["00741238"] = {"vr": "LT", "Value": [detail["reason"]]}
    if detail.get("contact_uri"):
        shown["0074100A"] = {"vr": "UR", "Value": [detail["contact_uri"]]}
    if detail.get("contact_name"):
        shown["0074100C"] = {"vr": "LO", "Value": [detail["contact_name"]]}
    return shown


def cancel(
    session: Session,
    task: Task,
    reason: str,
    *,
    actor: str,
    detail: dict[str, Any] | None = None,
) -> CancelAccepted | TaskRefused:
    """Request Cancellation (PS3.4 CC.2.2, PS3.18 §11.8). Commits; audited.

    A SCHEDULED workitem ends CANCELED at once (``task.canceled``). One an
    outside performer holds (IN PROGRESS) is not changed: the request is
    kept (``detail``: the reason, contact and requesting AE of PS3.4 CC.2.2)
    and the performer is sent a UPS Cancel Requested event
    (:mod:`aifi.hub.ups_events`, PS3.4 CC.2.4.3), then cancels with its
    Transaction UID or completes (``task.cancel_requested``). A workitem
    the hub's own worker runs is not stopped (409): its results come as
    usual. One already CANCELED is a 202 with warning ``0xB304``; a
    COMPLETED one is a 409.
    """
    ended = session.execute(
        update(Task)
        .where(Task.id == task.id, Task.state == TaskState.SCHEDULED.value)
        .values(state=TaskState.CANCELED.value, reason=reason, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if getattr(ended, "rowcount", 0):
        _audit(session, task, "task.canceled", actor, {"reason": reason})
    session.commit()
    session.refresh(task)
    if getattr(ended, "rowcount", 0):
        return CancelAccepted(task)
    if task.state == TaskState.CANCELED.value:
        return CancelAccepted(task, warning=B304)
    if task.state == TaskState.COMPLETED.value:
        return TaskRefused(409, f"{C311}: workitem {task.client_task_id} is not canceled")
    if not (task.claimed_by or "").startswith(_PERFORMER):
        return TaskRefused(
            409,
            f"workitem {task.client_task_id} is IN PROGRESS at the hub's own worker, which is not"
            " stopped mid-run; its results come as usual",
        )
    kept = {"reason": reason, **(detail or {}), "requested_by": actor}
    _audit(session, task, "task.cancel_requested", actor, {"reason": reason})
    ups_events.record_cancel_request(session, task, kept)  # commits the request and its event
    return CancelAccepted(task, requested=True)


# -- the outside performer: Change State (PS3.18 §11.7) and Update (§11.6) ------------

#: The reasons a Change State, Cancel or Update is refused or warned about (PS3.18
#: Table 11.7.3-2), each its DIMSE status and words from the one status table
#: (PS3.4 Tables CC.2.1-2, CC.2.2-2 and CC.2.6-1; :mod:`aifi.dicom.status`).
C300 = status.reason(status.UPS_MAY_NO_LONGER_BE_UPDATED)
C301 = status.reason(status.UPS_WRONG_TRANSACTION_UID)
C302 = status.reason(status.UPS_ALREADY_IN_PROGRESS)
C303 = status.reason(status.UPS_SCHEDULED_ONLY_VIA_N_CREATE)
C304 = status.reason(status.UPS_FINAL_STATE_REQUIREMENTS_NOT_MET)
C307 = status.reason(status.UPS_NO_SUCH_INSTANCE)
C310 = status.reason(status.UPS_NOT_YET_IN_PROGRESS)
C311 = status.reason(status.UPS_IS_COMPLETED)
B304 = status.reason(status.UPS_ALREADY_CANCELED)
B306 = status.reason(status.UPS_ALREADY_COMPLETED)

_PERFORMER = "performer:"
#: what a performer may set with Update (PS3.4 Table CC.2.5-3, the performer's part):
#: the Transaction UID and the progress (0074,1002) > (0074,1004) / (0074,1006)
_UPDATE_KEYS = frozenset({"00081195", "00741002"})
_PROGRESS_KEYS = frozenset({"00741004", "00741006"})


def _claimed_by(principal_id: str, transaction_uid: str) -> str:
    return f"{_PERFORMER}{principal_id}:{transaction_uid}"


def _holds(task: Task, principal_id: str, transaction_uid: str) -> bool:
    return bool(transaction_uid) and task.claimed_by == _claimed_by(principal_id, transaction_uid)


def find_for_performer(session: Session, uid: str, outside: Collection[str]) -> Task | TaskRefused:
    """The workitem ``uid`` of an algorithm performed outside, of whichever hospital (404/409)."""
    found = session.scalars(
        select(Task).where(Task.client_task_id == uid, Task.algorithm_id.in_(sorted(outside)))
    ).all()
    if not found:
        return TaskRefused(404, f"{C307}: no workitem {uid} for an outside performer")
    if len(found) > 1:  # two hospitals chose the same UID: refuse rather than guess
        return TaskRefused(409, f"workitem UID {uid} is not unique at the hub; ask the operator")
    return found[0]


def performable(session: Session, outside: Collection[str], *, limit: int) -> list[Task]:
    """SCHEDULED and IN PROGRESS workitems an outside performer may see (Search), oldest first."""
    if not outside:
        return []
    return list(
        session.scalars(
            select(Task)
            .where(
                Task.algorithm_id.in_(sorted(outside)),
                Task.state.in_((TaskState.SCHEDULED.value, TaskState.IN_PROGRESS.value)),
            )
            .order_by(Task.priority, Task.created_at, Task.id)
            .limit(limit)
        )
    )


@dataclass(frozen=True)
class StateChanged:
    """A Change State that succeeded, with the warning of PS3.18 Table 11.7.3-2 if any."""

    task: Task
    warning: str | None = None


def change_state(
    session: Session,
    task: Task,
    wanted: str,
    transaction_uid: str,
    *,
    principal_id: str,
    lease_s: float,
    reason: str = "",
    store: ObjectStore | None = None,
    algorithms: Callable[[str], Algorithm] | None = None,
) -> StateChanged | TaskRefused:
    """Change UPS State (PS3.4 CC.2.1, PS3.18 §11.7) for an outside performer. Commits; audited.

    SCHEDULED → IN PROGRESS claims the workitem with ``transaction_uid`` (a
    lease of ``lease_s``); IN PROGRESS → COMPLETED or CANCELED only with the
    same Transaction UID. A missing or wrong Transaction UID is a 400; a
    move the state does not allow a 409, each with its status text.

    COMPLETED needs the findings the performer handed in under this claim
    (:func:`hand_in`; else 409 ``0xC304``, the final state requirements of
    PS3.4 CC.2.1.3.1 not met): the hub makes their result objects in
    ``store`` with the algorithm's manifest from ``algorithms``
    (:func:`aifi.hub.performed.make_results`) and commits them with
    COMPLETED, fenced on the claim. Findings that cannot be made into them
    are a 422 and the workitem stays IN PROGRESS.
    """
    actor = f"{Role.PERFORMER.value}:{principal_id}"
    if not transaction_uid:
        return TaskRefused(400, f"{C301}: Change State needs the Transaction UID (0008,1195)")
    if len(transaction_uid) > 64:
        return TaskRefused(400, f"{C301}: a Transaction UID has at most 64 characters (PS3.5 UI)")
    if wanted == TaskState.SCHEDULED.value:
        return TaskRefused(409, C303)
    if wanted not in (s.value for s in TaskState):
        return TaskRefused(400, f"(0074,1000) {wanted!r} is not IN PROGRESS, COMPLETED or CANCELED")
    current = task.state
    if wanted == TaskState.IN_PROGRESS.value:
        if current == TaskState.IN_PROGRESS.value:
            return TaskRefused(409, C302)
        if current != TaskState.SCHEDULED.value:
            return TaskRefused(409, C311 if current == TaskState.COMPLETED.value else C300)
        asked = ups_events.cancel_requests(session, [task.id]).get(task.id)
        if asked is not None:  # asked while a performer held it, then given back: it stands
            said = f"canceled at the requester's request: {asked.get('reason') or 'none given'}"
            ended = cancel(session, task, said, actor=str(asked.get("requested_by") or actor))
            if isinstance(ended, CancelAccepted):
                return TaskRefused(409, f"{C300}: its cancellation was requested; it is CANCELED")
        held_by = _claimed_by(principal_id, transaction_uid)
        # the claim, its run.started (the performer's own) and the findings reset: one commit
        if not claim(session, task.id, held_by, lease_s, record_start=False, commit=False):
            session.refresh(task)  # a hub worker or another performer was first
            return TaskRefused(409, C302 if task.state == TaskState.IN_PROGRESS.value else C300)
        session.execute(  # findings handed in under an earlier, lost claim are not this one's
            update(Task)
            .where(Task.id == task.id, Task.claimed_by == held_by)
            .values(findings=None)
            .execution_options(synchronize_session=False)
        )
        _audit(session, task, "run.started", actor, {"performer": principal_id})
        session.commit()
        session.refresh(task)
        return StateChanged(task)
    # COMPLETED or CANCELED: only by the holder of the claim
    if current == wanted and task.claimed_by == f"{_PERFORMER}{principal_id}":
        # it ended it already: PS3.18 Table 11.7.3-2 answers 200 with a warning
        return StateChanged(task, B306 if wanted == TaskState.COMPLETED.value else B304)
    if current == TaskState.SCHEDULED.value:
        return TaskRefused(409, C310)
    if current != TaskState.IN_PROGRESS.value:
        return TaskRefused(409, C311 if current == TaskState.COMPLETED.value else C300)
    if not _holds(task, principal_id, transaction_uid):
        return TaskRefused(400, C301)
    if wanted == TaskState.COMPLETED.value:
        if store is None or algorithms is None:
            raise TypeError("change_state to COMPLETED needs the store and the algorithms")
        return _complete(session, task, transaction_uid, principal_id, store, algorithms)
    if not fence(session, task.id, _claimed_by(principal_id, transaction_uid)):
        session.rollback()
        session.refresh(task)
        return TaskRefused(409, f"{C300}: the claim was lost (the performer was silent too long)")
    asked = ups_events.cancel_requests(session, [task.id]).get(task.id)
    said = f"canceled by its outside performer: {reason or 'no reason given'}"
    if asked is not None:  # it answers the requester's cancel request (PS3.4 CC.2.4.3)
        said = "canceled by its outside performer at the requester's request: " + "; ".join(
            p for p in (str(asked.get("reason") or "no reason given"), reason) if p
        )
    task.state = wanted
    task.reason = said[:2000]
    task.findings = None  # a canceled step reports nothing
    task.claimed_by = f"{_PERFORMER}{principal_id}"  # who ended it; the Transaction UID is spent
    task.lease_until = None
    task.updated_at = utcnow()
    _audit(
        session,
        task,
        "run.canceled",
        actor,
        {"performer": principal_id, "reason": task.reason},
    )
    session.commit()
    session.refresh(task)
    return StateChanged(task)


def _complete(
    session: Session,
    task: Task,
    transaction_uid: str,
    principal_id: str,
    store: ObjectStore,
    algorithms: Callable[[str], Algorithm],
) -> StateChanged | TaskRefused:
    """IN PROGRESS → COMPLETED with the result objects of the handed-in findings."""
    if task.findings is None:
        return TaskRefused(
            409,
            f"{C304}: no findings were handed in for workitem {task.client_task_id}; "
            f"PUT /workitems/{task.client_task_id}/findings first, or cancel it with its reason",
        )
    try:
        manifest = algorithms(task.algorithm_id).manifest
        findings = findings_from_json(task.findings)
        made = make_results(session, task, store, manifest, findings)
    except (AifiError, ValueError) as exc:  # what the encoders refuse: the performer can fix it
        session.rollback()
        return TaskRefused(
            422, f"the findings cannot be made into {task.algorithm_id}'s result objects: {exc}"
        )
    if not fence(session, task.id, _claimed_by(principal_id, transaction_uid)):
        session.rollback()
        discard(store, made.keys)
        session.refresh(task)
        return TaskRefused(409, f"{C300}: the claim was lost (the performer was silent too long)")
    results = made.outcome.results
    for encoded, key in zip(results, made.keys, strict=True):
        task.results.append(
            Result(
                hospital_id=task.hospital_id,
                kind=encoded.kind,
                study_instance_uid=encoded.study_instance_uid,
                series_instance_uid=encoded.series_instance_uid,
                sop_instance_uid=encoded.sop_instance_uid,
                sop_class_uid=encoded.sop_class_uid,
                object_key=key,
                size=len(encoded.data),
            )
        )
    task.state = TaskState.COMPLETED.value
    task.algorithm_version = manifest.version
    task.urgent = findings.urgent
    task.reason = None
    task.claimed_by = f"{_PERFORMER}{principal_id}"  # who ended it; the Transaction UID is spent
    task.lease_until = None
    task.updated_at = utcnow()
    actor = f"{Role.PERFORMER.value}:{principal_id}"
    _audit(
        session,
        task,
        "results.made",
        actor,
        {
            "objects": len(results),
            "kinds": sorted({r.kind for r in results}),
            "bytes": sum(len(r.data) for r in results),
            "performer": principal_id,
        },
    )
    _audit(
        session, task, "run.completed", actor, {"performer": principal_id, "urgent": task.urgent}
    )
    try:
        session.commit()  # results, COMPLETED and their two events, together
    except Exception:
        session.rollback()
        discard(store, made.keys)
        raise
    session.refresh(task)
    return StateChanged(task)


#: the largest findings document a performer may hand in
MAX_FINDINGS_BYTES = 1024 * 1024


def _held(task: Task, principal_id: str, transaction_uid: str) -> TaskRefused | None:
    """Why the performer may not act on ``task`` under ``transaction_uid`` now, or None."""
    if task.state in (TaskState.COMPLETED.value, TaskState.CANCELED.value):
        return TaskRefused(409, f"{C300}: workitem {task.client_task_id} is {task.state}")
    if task.state != TaskState.IN_PROGRESS.value:
        return TaskRefused(409, C310)
    if not _holds(task, principal_id, transaction_uid):
        return TaskRefused(
            400, f"{C301}: give the Transaction UID of this performer's claim (Transaction-UID)"
        )
    return None


def hand_in(
    session: Session,
    task: Task,
    document: bytes,
    transaction_uid: str,
    *,
    principal_id: str,
    principal_name: str,
    lease_s: float,
) -> Task | TaskRefused:
    """The performer's findings for the workitem it holds; kept until COMPLETED; renews the claim.

    ``document`` is the findings JSON the hub's algorithms and remote
    algorithms answer with (:func:`aifi.algorithms.findings_json.findings_on`:
    each image finding on an input of the workitem's study); a document that
    does not read is a 422 naming the field. Handing in again replaces the
    findings. They record who made them (``details.performer``: the
    performer principal's id and name), and are shown with the task as its
    performed procedure is while IN PROGRESS (PS3.4 CC.2.5.1.3).
    """
    refused = _held(task, principal_id, transaction_uid)
    if refused is not None:
        return refused
    if len(document) > MAX_FINDINGS_BYTES:
        return TaskRefused(413, f"a findings document has at most {MAX_FINDINGS_BYTES} bytes")
    sops = {i.sop_instance_uid for i in current_inputs(task)}
    try:
        findings = findings_on(document, sops)
    except ValueError as exc:
        return TaskRefused(422, f"the findings cannot be read: {exc}")
    findings = replace(
        findings,
        details={
            **findings.details,
            "performer": {"principal": principal_id, "name": principal_name},
        },
    )
    now = utcnow()
    kept = session.execute(  # with the claim renewed, as an Update renews it
        update(Task)
        .where(
            Task.id == task.id,
            Task.state == TaskState.IN_PROGRESS.value,
            Task.claimed_by == _claimed_by(principal_id, transaction_uid),
        )
        .values(
            findings=findings_to_json(findings),
            lease_until=now + timedelta(seconds=lease_s),
            heartbeat_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(kept, "rowcount", 0):
        _audit(
            session,
            task,
            "findings.handed_in",
            f"{Role.PERFORMER.value}:{principal_id}",
            {"performer": principal_id, "images": len(findings.images), "urgent": findings.urgent},
        )
    session.commit()
    session.refresh(task)
    if not getattr(kept, "rowcount", 0):
        return TaskRefused(409, f"{C300}: the claim was lost (the performer was silent too long)")
    return task


def input_keys(
    session: Session,
    task: Task,
    transaction_uid: str,
    principal_id: str,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> list[str] | TaskRefused:
    """Store keys of the workitem's inputs in ``study`` (series, instance) for its performer.

    Only the instances the workitem names (its study's and its priors'),
    only while the performer holds it with ``transaction_uid``; anything
    else of the hospital stays out of reach (404).
    """
    refused = _held(task, principal_id, transaction_uid)
    if refused is not None:
        return refused
    keys = [
        link.instance.object_key
        for link in sorted(task.inputs, key=lambda link: link.instance_id)
        if link.instance.study_instance_uid == study
        and link.instance.purged_at is None
        and (series is None or link.instance.series_instance_uid == series)
        and (sop is None or link.instance.sop_instance_uid == sop)
    ]
    if not keys:
        return TaskRefused(404, f"workitem {task.client_task_id} has no such input")
    return keys


def performer_update(
    session: Session,
    task: Task,
    ds: dict[str, Any],
    *,
    principal_id: str,
    lease_s: float,
) -> Task | TaskRefused:
    """Update UPS (PS3.4 CC.2.6, PS3.18 §11.6) by its performer: progress only; renews the claim.

    The performer may set the Procedure Step Progress (0074,1004) and its
    description (0074,1006) in UPS Progress Information Sequence (0074,1002),
    with the Transaction UID of its claim. Anything else is a 400.
    """
    unknown = sorted(t for t in ds if t not in _UPDATE_KEYS)
    progress = _items(ds, "00741002")
    unknown += sorted(t for item in progress for t in item if t.upper() not in _PROGRESS_KEYS)
    if unknown:
        named = ", ".join(f"({t[:4]},{t[4:]})" for t in unknown)
        return TaskRefused(
            400, f"a performer may update only the progress (0074,1002); not {named}"
        )
    if task.state in (TaskState.COMPLETED.value, TaskState.CANCELED.value):
        return TaskRefused(409, f"{C300}: workitem {task.client_task_id} is {task.state}")
    if task.state != TaskState.IN_PROGRESS.value:
        return TaskRefused(409, C310)
    transaction_uid = _text(_first(ds, "00081195"))
    if not _holds(task, principal_id, transaction_uid):
        return TaskRefused(400, C301)
    text = ""
    if progress:
        item = {k.upper(): v for k, v in progress[0].items()}
        percent, said = _text(_first(item, "00741004")), _text(_first(item, "00741006"))
        try:
            number = float(percent) if percent else None
        except ValueError:
            number = -1.0
        if number is not None and not 0 <= number <= 100:
            return TaskRefused(400, f"Procedure Step Progress (0074,1004) {percent!r} is not 0-100")
        text = " ".join(p for p in (f"{percent} %" if percent else "", said) if p)
    if not renew(session, task.id, _claimed_by(principal_id, transaction_uid), lease_s):
        session.refresh(task)
        return TaskRefused(409, f"{C300}: the claim was lost (the performer was silent too long)")
    if text:
        session.execute(
            update(Task)
            .where(Task.id == task.id, Task.state == TaskState.IN_PROGRESS.value)
            .values(reason=text[:2000], updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.commit()
    session.refresh(task)
    return task


def _audit(session: Session, task: Task, action: str, actor: str, detail: dict[str, Any]) -> None:
    """Record ``action`` on ``task`` in the session's transaction: call it before the commit."""
    record_on_task(session, action, task, actor=actor, detail=detail)
