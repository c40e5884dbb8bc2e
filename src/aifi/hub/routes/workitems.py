"""``/workitems``: the hub's tasks as UPS-RS workitems (PS3.18 §11) for pseudonymized work.

Create (§11.4), Retrieve (§11.5), Search (§11.9) and Request Cancellation
(§11.8), mapped onto the same tasks as ``/tasks`` (:mod:`aifi.hub.workitems`);
Subscribe, Unsubscribe and Suspend Global Subscription (§11.10) with event
reports over the WebSocket ``/ws/subscribers/{AE}`` (§11.11, IHE RAD-109;
:mod:`aifi.hub.ups_events`). An attribute or query key the hub does not
support is a 400 with the reason.

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

import asyncio
import json
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    Header,
    HTTPException,
    Request,
    Response,
    WebSocket,
    WebSocketDisconnect,
    status,
)
from fastapi.responses import JSONResponse, StreamingResponse
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from aifi.dicom.multipart import content_type, new_boundary
from aifi.hub import tasks, ups_events, workitems
from aifi.hub.auth import CurrentHospital, RoleGate
from aifi.hub.db import retrying
from aifi.hub.deps import ContextDep, HubContext, SessionDep
from aifi.hub.models import Principal, Task
from aifi.hub.principals import find_by_token
from aifi.hub.wado import NotAcceptable, multipart_body, negotiate, plan
from aifi.netutil import warning_header
from aifi.protocol.schemas import PRIORITY_RANK, Role, TaskState

__all__ = ["events_router", "router"]

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
_FILTERED_GLOBAL = "1.2.840.10008.5.1.4.34.5.1"
#: how often a WebSocket looks in the database for what to report
_POLL_S = 0.25

#: who reads workitems: a hospital (its own) or an outside performer (those it performs)
WorkitemReader = Annotated[Principal, Depends(RoleGate(Role.HOSPITAL, Role.PERFORMER))]
Performer = Annotated[Principal, Depends(RoleGate(Role.PERFORMER))]


def _warning(reason: str) -> str:
    """A Warning header carrying a status reason (RFC 7234 §5.5): code 299, the reason quoted."""
    return warning_header("aifi-hub", reason)


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
    found = [t for t in found if priority is None or t.priority == PRIORITY_RANK[priority]]
    asked = ups_events.cancel_requests(
        session, [t.id for t in found if t.state == TaskState.IN_PROGRESS.value]
    )
    views = [
        workitems.workitem_of(
            t, retrieve_url=_retrieve_url(request, caller, t), cancel_request=asked.get(t.id)
        )
        for t in found
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
    asked = ups_events.cancel_requests(session, [task.id]).get(task.id)
    view = workitems.workitem_of(
        task, retrieve_url=_retrieve_url(request, caller, task), cancel_request=asked
    )
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
    """Request Cancellation (PS3.18 §11.8): 202; an outside performer holding it is told.

    A SCHEDULED workitem is CANCELED now; one IN PROGRESS at an outside
    performer stays so until the performer, sent a UPS Cancel Requested
    event, cancels it (or completes it). Already CANCELED: 202 with warning
    ``0xB304``; COMPLETED, or run by the hub's own worker: 409.
    """
    ds = await _dataset(request)
    unknown = sorted(t for t in ds if t not in ups_events.CANCEL_KEYS)
    if unknown:
        named = ", ".join(f"({t[:4]},{t[4:]})" for t in unknown)
        raise _refused(400, f"attribute {named} is not part of a cancel request")
    task = workitems.find(session, hospital.id, uid)
    if task is None:
        raise _refused(404, f"no workitem {uid}")
    detail: dict[str, Any] = {}
    for tag, key in ups_events.CANCEL_KEYS.items():
        values = (ds.get(tag) or {}).get("Value") or []
        if values:
            detail[key] = values if key == "reason_codes" else str(values[0])[:1024]
    said = detail.get("reason") or "cancellation requested"
    outcome = workitems.cancel(
        session,
        task,
        f"canceled at the requester's request: {said}",
        actor=f"hospital:{hospital.id}",
        detail=detail,
    )
    if isinstance(outcome, tasks.TaskRefused):
        raise _refused(outcome.status_code, outcome.detail)
    headers = {"Warning": _warning(outcome.warning)} if outcome.warning else {}
    return Response(status_code=202, headers=headers)


# -- subscriptions (PS3.18 §11.10) and event reports over WebSocket (§11.11) ----------


def _subscribed(
    uid: str,
    aet: str,
    request: Request,
    caller: Principal,
    session: SessionDep,
    context: ContextDep,
) -> Task | None:
    """The workitem a subscription names (None: global), after the checks of PS3.18 §11.10."""
    if not 0 < len(aet) <= 16 or "\\" in aet or aet != aet.strip():
        raise _refused(400, f"{aet!r} is not an AE title (1 to 16 characters, PS3.5 AE)")
    extra = set(request.query_params) - {"deletionlock"}
    if extra:
        raise _refused(400, f"unknown query parameter {', '.join(sorted(extra))}")
    if request.query_params.get("deletionlock", "false").lower() != "false":
        raise _refused(
            400, "deletionlock=true is not supported: the hub keeps no deleted workitems"
        )
    if uid == _FILTERED_GLOBAL:
        raise _refused(400, "filtered global subscriptions are not supported")
    if uid == ups_events.GLOBAL_SUBSCRIPTION:
        return None
    if caller.role == Role.PERFORMER.value:
        return _performed(session, context, uid)
    task = workitems.find(session, _hospital_id(caller), uid)
    if task is None:
        raise _refused(404, f"no workitem {uid}")
    return task


@router.post("/{uid}/subscribers/{aet}", status_code=status.HTTP_201_CREATED)
def subscribe(
    uid: str, aet: str, request: Request, caller: WorkitemReader, context: ContextDep
) -> Response:
    """Subscribe (PS3.18 §11.10.1): to one workitem, or globally; events at the WebSocket.

    Subscribing twice is harmless: run again after a transient failure.
    """

    def work(s: Session) -> None:
        ups_events.subscribe(s, caller, aet, _subscribed(uid, aet, request, caller, s, context))

    retrying(context.sessions, work)
    ws = str(request.base_url).replace("http", "ws", 1).rstrip("/")
    return Response(status_code=201, headers={"Content-Location": f"{ws}/ws/subscribers/{aet}"})


@router.post("/{uid}/subscribers/{aet}/suspend")
def suspend_subscription(
    uid: str,
    aet: str,
    request: Request,
    caller: WorkitemReader,
    session: SessionDep,
    context: ContextDep,
) -> Response:
    """Suspend Global Subscription (PS3.18 §11.10.3): no new workitems; today's stay."""
    if _subscribed(uid, aet, request, caller, session, context) is not None:
        raise _refused(400, "only the global subscription is suspended")
    outside = context.settings.outside_algorithms
    retrying(context.sessions, lambda s: ups_events.suspend(s, caller, aet, outside))
    return Response(status_code=200)


@router.delete("/{uid}/subscribers/{aet}")
def unsubscribe(
    uid: str, aet: str, request: Request, caller: WorkitemReader, context: ContextDep
) -> Response:
    """Unsubscribe (PS3.18 §11.10.2); globally: every subscription of the AE title."""

    def work(s: Session) -> None:  # idempotent: run again after a transient failure
        ups_events.unsubscribe(s, caller, aet, _subscribed(uid, aet, request, caller, s, context))

    retrying(context.sessions, work)
    return Response(status_code=200)


#: the WebSocket of event reports, outside ``/workitems`` (as ``Content-Location`` names it)
events_router = APIRouter(tags=["workitems"])


@events_router.websocket("/ws/subscribers/{aet}")
async def event_reports(websocket: WebSocket, aet: str) -> None:
    """UPS event reports (PS3.18 §11.11, IHE RAD-109) of ``aet``'s subscriptions, DICOM JSON.

    The bearer token of the subscriber in ``Authorization``; a token that
    is unknown or of another role closes the socket (1008, policy violation).
    """
    context: HubContext = websocket.app.state.hub
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")

    def who() -> Principal | None:
        with context.sessions() as session:
            found = find_by_token(session, token.strip()) if scheme.lower() == "bearer" else None
            if found is None or found.role not in (Role.HOSPITAL.value, Role.PERFORMER.value):
                return None
            session.expunge(found)
            return found

    principal = await run_in_threadpool(who)
    if principal is None:
        await websocket.close(code=1008)
        return
    await websocket.accept()
    watcher = ups_events.Watcher(principal, aet, context.settings.outside_algorithms)

    def due() -> list[dict[str, Any]]:
        with context.sessions() as session:
            return watcher.poll(session)

    try:
        while True:
            for report in await run_in_threadpool(due):
                await websocket.send_text(json.dumps(report))
            try:  # the subscriber sends nothing; this notices it leaving
                message = await asyncio.wait_for(websocket.receive(), timeout=_POLL_S)
            except TimeoutError:
                continue
            if message["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return
