"""``/workitems``: the hub's tasks as UPS-RS workitems (PS3.18 §11) for pseudonymized work.

Create (§11.4), Retrieve (§11.5), Search (§11.9) and Request Cancellation
(§11.8), mapped onto the same tasks as ``/tasks`` (:mod:`aifi.hub.workitems`).
An attribute or query key the hub does not support is a 400 with the reason.

The hub's own workers perform the workitems, except those of the
``outside_algorithms``: an outside performer (role ``performer``) searches
and retrieves those (of every hospital; they are pseudonymized), claims one
with Change State (§11.7, ``PUT /workitems/{uid}/state``) and a Transaction
UID, reports progress with Update (§11.6, ``POST /workitems/{uid}``) and
ends it COMPLETED or CANCELED with the same Transaction UID. A refusal
carries its PS3.18 Table 11.7.3-2 reason in the ``Warning`` header.

While it holds a workitem the performer reads its inputs at the Retrieve
URL (0008,1190) of each Input Information Sequence item, WADO-RS Retrieve
Study / Instance under ``/workitems/{uid}/studies/...`` (PS3.18 §10.4), and
hands in its findings with ``PUT /workitems/{uid}/findings``, both with the
``Transaction-UID`` header; COMPLETED then makes the result objects of
those findings (:func:`aifi.hub.workitems.change_state`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse
from pydicom.uid import generate_uid
from starlette.concurrency import run_in_threadpool

from aifi.dicom.multipart import content_type, new_boundary
from aifi.hub import tasks, workitems
from aifi.hub.auth import CurrentHospital, RoleGate
from aifi.hub.deps import ContextDep, SessionDep
from aifi.hub.models import Principal, Task
from aifi.hub.wado import NotAcceptable, multipart_body, negotiate, plan
from aifi.protocol.schemas import PRIORITY_RANK, Role, TaskState

__all__ = ["router"]

router = APIRouter(prefix="/workitems", tags=["workitems"])

_DICOM_JSON = "application/dicom+json"
_SEARCH = {
    "ProcedureStepState": "state",
    "00741000": "state",
    "ScheduledProcedureStepPriority": "priority",
    "00741200": "priority",
    "limit": "limit",
}
_STATE_KEYS = frozenset({"00741000", "00081195", "00741238"})
#: the header carrying the Transaction UID on the calls PS3.18 gives no body for it
TRANSACTION_HEADER = "Transaction-UID"

#: who reads workitems: a hospital (its own) or an outside performer (those it performs)
WorkitemReader = Annotated[Principal, Depends(RoleGate(Role.HOSPITAL, Role.PERFORMER))]
Performer = Annotated[Principal, Depends(RoleGate(Role.PERFORMER))]


def _warning(reason: str) -> str:
    """A Warning header carrying a status reason (RFC 7234 §5.5): code 299, the reason quoted."""
    text = reason.encode("ascii", "replace").decode().replace('"', "'")  # a header is Latin-1
    return f'299 aifi-hub: "{text}"'


def _refused(status_code: int, reason: str) -> HTTPException:
    return HTTPException(status_code, detail=reason, headers={"Warning": _warning(reason)})


async def _dataset(request: Request) -> dict[str, Any]:
    try:
        parsed = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise _refused(400, f"the body is not JSON: {exc}") from exc
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]
    if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
        raise _refused(400, "the body must be one DICOM JSON object (PS3.18 Annex F)")
    return {k.upper(): v for k, v in parsed.items()}


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_workitem(
    request: Request, hospital: CurrentHospital, session: SessionDep, context: ContextDep
) -> Response:
    extra = set(request.query_params) - {"workitem"}
    if extra:
        raise _refused(400, f"unknown query parameter {', '.join(sorted(extra))}")
    ds = await _dataset(request)
    given = (ds.get("00080018") or {}).get("Value") or []
    uid = request.query_params.get("workitem") or (str(given[0]) if given else generate_uid())
    if workitems.find(session, hospital.id, uid) is not None:
        raise _refused(409, f"workitem {uid} exists already")
    body = workitems.task_create(ds, uid)
    if isinstance(body, tasks.TaskRefused):
        raise _refused(body.status_code, body.detail)
    outcome = tasks.create_task(session, hospital.id, body, context.algorithms)
    if isinstance(outcome, tasks.TaskRefused):
        raise _refused(outcome.status_code, outcome.detail)
    task, created = outcome
    if created:
        context.dispatcher.submit(task.id)
    location = f"{str(request.base_url).rstrip('/')}/workitems/{uid}"
    return Response(status_code=201, headers={"Location": location})


@router.get("")
def search_workitems(
    request: Request, caller: WorkitemReader, session: SessionDep, context: ContextDep
) -> Response:
    unknown = sorted(set(request.query_params) - set(_SEARCH))
    if unknown:
        raise _refused(
            400,
            f"unknown search key {', '.join(unknown)}; the hub matches on ProcedureStepState"
            " and ScheduledProcedureStepPriority",
        )
    wanted = {_SEARCH[k]: v for k, v in request.query_params.items()}
    state = wanted.get("state")
    if state is not None and state not in {s.value for s in TaskState}:
        raise _refused(400, f"(0074,1000) {state!r} is not a UPS state")
    priority = wanted.get("priority")
    if priority is not None and priority not in PRIORITY_RANK:
        raise _refused(400, f"(0074,1200) {priority!r} is not HIGH, MEDIUM or LOW")
    limit = wanted.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise _refused(400, "limit is a whole number from 1 to 1000")
    if caller.role == Role.PERFORMER.value:
        found = [
            t
            for t in workitems.performable(
                session, context.settings.outside_algorithms, limit=int(limit)
            )
            if state is None or t.state == state
        ]
    else:
        found = tasks.list_tasks(
            session,
            _hospital_id(caller),
            state=TaskState(state) if state else None,
            limit=int(limit),
        )
    views = [
        workitems.workitem_of(t, retrieve_url=_retrieve_url(request, caller, t))
        for t in found
        if priority is None or t.priority == PRIORITY_RANK[priority]
    ]
    if not views:
        return Response(status_code=204)
    return JSONResponse(views, media_type=_DICOM_JSON)


def _retrieve_url(request: Request, caller: Principal, task: Task) -> str | None:
    """Where the performer reads a workitem's inputs; None for a hospital (it has WADO-RS)."""
    if caller.role != Role.PERFORMER.value:
        return None
    return f"{str(request.base_url).rstrip('/')}{router.prefix}/{task.client_task_id}"


def _hospital_id(principal: Principal) -> str:
    if principal.hospital_id is None:  # a broken invariant: role hospital without one
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this token acts for no hospital")
    return principal.hospital_id


def _performed(session: SessionDep, context: ContextDep, uid: str) -> Task:
    found = workitems.find_for_performer(session, uid, context.settings.outside_algorithms)
    if isinstance(found, tasks.TaskRefused):
        raise _refused(found.status_code, found.detail)
    return found


@router.get("/{uid}")
def retrieve_workitem(
    uid: str, request: Request, caller: WorkitemReader, session: SessionDep, context: ContextDep
) -> Response:
    if caller.role == Role.PERFORMER.value:
        task: Task | None = _performed(session, context, uid)
    else:
        task = workitems.find(session, _hospital_id(caller), uid)
    if task is None:
        raise _refused(404, f"no workitem {uid}")
    view = workitems.workitem_of(task, retrieve_url=_retrieve_url(request, caller, task))
    return JSONResponse([view], media_type=_DICOM_JSON)


TransactionHeader = Annotated[str, Header(alias=TRANSACTION_HEADER)]


def _inputs(
    session: SessionDep,
    context: ContextDep,
    performer: Principal,
    uid: str,
    transaction: str,
    accept: str | None,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> StreamingResponse:
    """The workitem's inputs as WADO-RS multipart/related (PS3.18 §10.4.1.1), for its performer."""
    try:
        syntaxes = negotiate(accept)
    except NotAcceptable as exc:
        raise _refused(406, str(exc)) from exc
    task = _performed(session, context, uid)
    keys = workitems.input_keys(
        session, task, transaction.strip(), performer.id, study, series, sop
    )
    if isinstance(keys, tasks.TaskRefused):
        raise _refused(keys.status_code, keys.detail)
    try:
        planned = plan(context.store, keys, syntaxes)
    except NotAcceptable as exc:
        raise _refused(406, str(exc)) from exc
    boundary = new_boundary()
    return StreamingResponse(
        multipart_body(context.store, planned, boundary), media_type=content_type(boundary)
    )


@router.get("/{uid}/studies/{study}")
def retrieve_inputs(
    uid: str,
    study: str,
    performer: Performer,
    session: SessionDep,
    context: ContextDep,
    transaction: TransactionHeader = "",
    accept: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """WADO-RS Retrieve Study of a workitem's inputs: its performer, with the Transaction UID."""
    return _inputs(session, context, performer, uid, transaction, accept, study)


@router.get("/{uid}/studies/{study}/series/{series}/instances/{sop}")
def retrieve_input_instance(
    uid: str,
    study: str,
    series: str,
    sop: str,
    performer: Performer,
    session: SessionDep,
    context: ContextDep,
    transaction: TransactionHeader = "",
    accept: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """WADO-RS Retrieve Instance of one of a workitem's inputs, for its performer."""
    return _inputs(session, context, performer, uid, transaction, accept, study, series, sop)


@router.put("/{uid}/findings")
async def hand_in_findings(
    uid: str,
    request: Request,
    performer: Performer,
    session: SessionDep,
    context: ContextDep,
    transaction: TransactionHeader = "",
) -> Response:
    """The performer's findings (aifi findings JSON) for the workitem it holds; 204.

    An Update of the performed procedure (PS3.18 §11.6) in aifi's findings
    shape: kept with the workitem until COMPLETED makes its result objects.
    """
    document = await request.body()
    task = _performed(session, context, uid)
    outcome = workitems.hand_in(
        session,
        task,
        document,
        transaction.strip(),
        principal_id=performer.id,
        principal_name=performer.name,
        lease_s=context.settings.performer_lease_s,
    )
    if isinstance(outcome, tasks.TaskRefused):
        raise _refused(outcome.status_code, outcome.detail)
    return Response(status_code=204)


@router.post("/{uid}")
async def update_workitem(
    uid: str, request: Request, performer: Performer, session: SessionDep, context: ContextDep
) -> Response:
    """Update (PS3.18 §11.6) by the workitem's performer: its progress, with the Transaction UID."""
    ds = await _dataset(request)
    task = _performed(session, context, uid)
    outcome = workitems.performer_update(
        session,
        task,
        ds,
        principal_id=performer.id,
        lease_s=context.settings.performer_lease_s,
    )
    if isinstance(outcome, tasks.TaskRefused):
        raise _refused(outcome.status_code, outcome.detail)
    return Response(status_code=200)


@router.put("/{uid}/state")
async def change_workitem_state(
    uid: str, request: Request, performer: Performer, session: SessionDep, context: ContextDep
) -> Response:
    """Change State (PS3.18 §11.7): claim with a Transaction UID, then complete or cancel."""
    ds = await _dataset(request)
    unknown = sorted(t for t in ds if t not in _STATE_KEYS)
    if unknown:
        named = ", ".join(f"({t[:4]},{t[4:]})" for t in unknown)
        raise _refused(400, f"attribute {named} is not part of a Change State request")
    task = _performed(session, context, uid)
    wanted = str(((ds.get("00741000") or {}).get("Value") or [""])[0]).strip()
    transaction = str(((ds.get("00081195") or {}).get("Value") or [""])[0]).strip()
    reason = str(((ds.get("00741238") or {}).get("Value") or [""])[0]).strip()
    outcome = await run_in_threadpool(  # COMPLETED encodes the results: off the event loop
        lambda: workitems.change_state(
            session,
            task,
            wanted,
            transaction,
            principal_id=performer.id,
            lease_s=context.settings.performer_lease_s,
            reason=reason,
            store=context.store,
            algorithms=context.algorithms,
        )
    )
    if isinstance(outcome, tasks.TaskRefused):
        raise _refused(outcome.status_code, outcome.detail)
    if outcome.warning is not None:
        return Response(status_code=200, headers={"Warning": _warning(outcome.warning)})
    return Response(status_code=200)


@router.post("/{uid}/cancelrequest", status_code=status.HTTP_202_ACCEPTED)
async def request_cancellation(
    uid: str, request: Request, hospital: CurrentHospital, session: SessionDep
) -> Response:
    ds = await _dataset(request)
    unknown = sorted(t for t in ds if t not in ("00741238", "00741242", "00741240", "00404031"))
    if unknown:
        raise _refused(400, f"attribute {', '.join(unknown)} is not part of a cancel request")
    task = workitems.find(session, hospital.id, uid)
    if task is None:
        raise _refused(404, f"no workitem {uid}")
    reasons = (ds.get("00741238") or {}).get("Value") or ["cancellation requested"]
    outcome = workitems.cancel(
        session,
        task,
        f"canceled at the requester's request: {reasons[0]}",
        actor=f"hospital:{hospital.id}",
    )
    if isinstance(outcome, tasks.TaskRefused):
        raise _refused(outcome.status_code, outcome.detail)
    return Response(status_code=202)
