"""UPS-RS workitems on the edge: the IHE AIW-I Task Manager a RIS or PACS talks to.

The edge is the only place that may see identity, so it is the Task Manager
proxy (IHE AIW-I, RAD-80..RAD-109): a Task Requester creates a workitem
naming a study it holds (by Study Instance UID or Accession Number) and an
algorithm; the edge turns it into a request (:meth:`EdgeState.add_request`)
that the assembler answers with an edge task once the study is stable, and
performs the task on the hub's behalf (the edge claims the workitem, with a
Transaction UID of its own, when the hub starts the work).

Transactions (PS3.18 §11, DICOM JSON, PS3.18 Annex F):

* Create ``POST /workitems{?workitem}`` (§11.4): Scheduled Workitem Code
  Sequence (0040,4018) names the algorithm (code value = algorithm id,
  scheme ``99AIFI``); the study is in Input Information Sequence
  (0040,4021) or Referenced Request Sequence (0040,A370); Scheduled
  Procedure Step Priority (0074,1200) HIGH, MEDIUM or LOW.
* Retrieve ``GET /workitems/{uid}`` (§11.5): with the result references
  (Output Information Sequence (0040,4033) inside Unified Procedure Step
  Performed Procedure Sequence (0074,1216)) once the results are in PACS.
* Update ``POST /workitems/{uid}`` (§11.6): priority and labels while SCHEDULED.
* Search ``GET /workitems?...`` (§11.9) on a few keys; an unknown key is a 400.
* Change State ``PUT /workitems/{uid}/state`` (§11.7) with Transaction UID.
* Request Cancellation ``POST /workitems/{uid}/cancelrequest`` (§11.8).
* Subscribe / Unsubscribe / Suspend ``POST|DELETE
  /workitems/{uid|1.2.840.10008.5.1.4.34.5}/subscribers/{AETitle}`` (§11.10).
* Event reports over the WebSocket ``/ws/subscribers/{AETitle}`` (§11.11):
  UPS State Reports (Event Type ID 1, PS3.4 CC.2.4) as the task moves
  SCHEDULED → IN PROGRESS → COMPLETED | CANCELED.

An attribute or query key this Task Manager does not support is refused
with 400 and the reason (also in a ``Warning: 299`` header, PS3.18 §8.6.2),
never ignored. Every call needs ``Authorization: Bearer <status.admin_password>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydicom.uid import generate_uid

from aifi.core.manifest import Priors
from aifi.edge.catalog import requested_priors
from aifi.edge.config import EdgeSettings
from aifi.edge.prior_search import held_study_priors
from aifi.edge.state import EdgeState
from aifi.errors import AifiError, HubError
from aifi.netutil import warning_header
from aifi.protocol.client import HubClient
from aifi.protocol.schemas import PRIORITY_RANK

__all__ = ["GLOBAL_SUBSCRIPTION", "UPS_PUSH", "UpsContext", "create_ups_router", "ups_state"]

logger = logging.getLogger(__name__)

#: UPS Push SOP Class (PS3.4 CC.3.1); a workitem's SOP Class UID.
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
#: The well-known UID of the global subscription (PS3.4 CC.3.1.4).
GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5"
_FILTERED_GLOBAL = "1.2.840.10008.5.1.4.34.5.1"
#: The coding scheme of algorithm codes in Scheduled Workitem Code Sequence.
SCHEME = "99AIFI"
_POLL_S = 0.2

# DICOM JSON tags (PS3.6) used here
SOP_CLASS, SOP_INSTANCE = "00080016", "00080018"
STATE, PRIORITY, READINESS = "00741000", "00741200", "00404041"
WORKITEM_CODE, INPUT_INFO, REQUEST = "00404018", "00404021", "0040A370"
STUDY, SERIES, ACCESSION = "0020000D", "0020000E", "00080050"
TRANSACTION = "00081195"
PERFORMED, OUTPUT_INFO = "00741216", "00404033"
PROGRESS, CANCEL_REASON, CANCEL_AT = "00741002", "00741238", "00404052"
LABEL, WORKLIST_LABEL = "00741204", "00741202"
CODE_VALUE, SCHEME_TAG, MEANING = "00080100", "00080102", "00080104"

_VR = {
    SOP_CLASS: "UI", SOP_INSTANCE: "UI", STATE: "CS", PRIORITY: "CS", READINESS: "CS",
    STUDY: "UI", SERIES: "UI", ACCESSION: "SH", TRANSACTION: "UI", CANCEL_REASON: "LT",
    CANCEL_AT: "DT", LABEL: "LO", WORKLIST_LABEL: "LO",
}  # fmt: skip

# What a created workitem may carry (PS3.4 Table CC.2.5-3, the part this Task Manager uses).
_CREATE_KEYS = frozenset(
    {
        "00080005",  # Specific Character Set
        SOP_CLASS, SOP_INSTANCE, STATE, PRIORITY, READINESS, LABEL, WORKLIST_LABEL,
        WORKITEM_CODE, INPUT_INFO, REQUEST, STUDY, ACCESSION,
        "00404005",  # Scheduled Procedure Step Start DateTime
        "00404011",  # Expected Completion DateTime
        "00100010", "00100020", "00100030", "00100040",  # the patient (stays at the edge)
        "00380010",  # Admission ID
    }
)  # fmt: skip
_UPDATE_KEYS = frozenset({TRANSACTION, PRIORITY, LABEL, WORKLIST_LABEL, "00404005", "00404011"})

# Search keys (keyword or tag) → how a workitem is matched
_SEARCH_KEYS = {
    "ProcedureStepState": STATE,
    STATE: STATE,
    "ScheduledProcedureStepPriority": PRIORITY,
    PRIORITY: PRIORITY,
    "SOPInstanceUID": SOP_INSTANCE,
    SOP_INSTANCE: SOP_INSTANCE,
    "StudyInstanceUID": STUDY,
    STUDY: STUDY,
    "AccessionNumber": ACCESSION,
    ACCESSION: ACCESSION,
    "ScheduledWorkitemCodeSequence.CodeValue": CODE_VALUE,
    f"{WORKITEM_CODE}.{CODE_VALUE}": CODE_VALUE,
}
_SEARCH_CONTROLS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})

# edge task state → UPS state (PS3.4 CC.1.1)
_UPS_OF_TASK = {
    "pending": "SCHEDULED",
    "held": "SCHEDULED",
    "ready": "SCHEDULED",
    "submitted": "SCHEDULED",
    "SCHEDULED": "SCHEDULED",
    "IN PROGRESS": "IN PROGRESS",
    "COMPLETED": "IN PROGRESS",  # results not yet in PACS
    "dead-letter": "IN PROGRESS",
    "delivered": "COMPLETED",
    "CANCELED": "CANCELED",
    "failed": "CANCELED",
    "discarded": "CANCELED",
}
_FINAL = ("COMPLETED", "CANCELED")


class UpsRefused(AifiError):
    """A request this Task Manager answers with an error status and its reason."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


@dataclass(frozen=True)
class UpsContext:
    state: EdgeState
    hub: HubClient
    token: str | None  # the status page's admin password; None: UPS-RS is not served
    retrieve_ae_title: str | None  # where results are stored (the PACS), for Retrieve AE Title
    settings: EdgeSettings | None = None  # its [[query_retrieve]] peers pull what is not held


# -- DICOM JSON ------------------------------------------------------------
def _attr(tag: str, value: Any) -> dict[str, Any]:
    return {"vr": _VR[tag], "Value": [value]}


def _first(ds: dict[str, Any], tag: str) -> Any:
    values = (ds.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _items(ds: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = ds.get(tag) or {}
    if element and element.get("vr") != "SQ":
        raise UpsRefused(400, f"({tag[:4]},{tag[4:]}) must be a sequence (vr SQ)")
    return [i for i in element.get("Value") or [] if isinstance(i, dict)]


def _text(value: Any) -> str:
    return str(value).strip() if value is not None else ""


def _body(raw: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(raw or b"null")
    except ValueError as exc:
        raise UpsRefused(400, f"the body is not JSON: {exc}") from exc
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]
    if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
        raise UpsRefused(400, "the body must be one DICOM JSON object (PS3.18 Annex F)")
    return parsed


def _unknown(ds: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(t for t in ds if t.upper() not in allowed)
    if unknown:
        named = ", ".join(f"({t[:4]},{t[4:]})" for t in unknown)
        raise UpsRefused(400, f"attribute {named} is not supported by this Task Manager")


# -- workitem → UPS state ----------------------------------------------------
def _task_id(state: EdgeState, item: dict[str, Any]) -> str | None:
    if item["task_id"]:
        return str(item["task_id"])
    if item["request_id"] is None:
        return None
    answered = state.request_task(int(item["request_id"]))
    if answered is None:
        return None
    found = answered or state.latest_task(item["study_instance_uid"], item["algorithm_id"])
    if found:
        state.update_workitem(item["uid"], task_id=found)
    return found


def ups_state(state: EdgeState, item: dict[str, Any]) -> str:
    """The workitem's Procedure Step State (0074,1000), from its edge task.

    A final state once reached is kept; the edge claims the workitem (a
    Transaction UID of its own) the first time it is seen IN PROGRESS.
    """
    if item["state"] in _FINAL:
        return str(item["state"])
    task_id = _task_id(state, item)
    current = "SCHEDULED"
    if task_id is not None:
        with contextlib.suppress(KeyError):
            current = _UPS_OF_TASK.get(state.task(task_id).state, "SCHEDULED")
    if current == "SCHEDULED" and item["state"] == "IN PROGRESS":  # claimed by a performer
        current = "IN PROGRESS"
    if current != "SCHEDULED" and not item["transaction_uid"]:
        item["transaction_uid"] = generate_uid()
        state.update_workitem(item["uid"], transaction_uid=item["transaction_uid"])
    if current in _FINAL or (current == "IN PROGRESS" and item["state"] != current):
        state.update_workitem(item["uid"], state=current)
    return current


def _path(sent: str | None, now: str, claimed: bool) -> list[str]:
    """The State Reports from ``sent`` to ``now``: a UPS is COMPLETED only through IN PROGRESS."""
    if sent is None:  # every workitem was created SCHEDULED: its reports start there
        return ["SCHEDULED", *_path("SCHEDULED", now, claimed)]
    if sent == now:
        return []
    if sent == "SCHEDULED" and (now == "COMPLETED" or (now == "CANCELED" and claimed)):
        return ["IN PROGRESS", now]
    return [now]


# -- the router ----------------------------------------------------------------
def create_ups_router(ctx: UpsContext) -> APIRouter:
    """The UPS-RS routes, mounted on the edge's local web server."""
    router = APIRouter(tags=["ups-rs"])
    state = ctx.state

    def authorised(headers: Any) -> None:
        if ctx.token is None:
            raise UpsRefused(403, "UPS-RS is off: set [status] admin_password to serve it")
        given = str(headers.get("authorization") or "")
        if not secrets.compare_digest(given.encode(), f"Bearer {ctx.token}".encode()):
            raise UpsRefused(401, "send Authorization: Bearer <the edge's status admin password>")

    def refused(exc: UpsRefused) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.reason},
            status_code=exc.status_code,
            headers={"Warning": warning_header("aifi-edge", exc.reason)},
        )

    def found(uid: str) -> dict[str, Any]:
        item = state.workitem(uid)
        if item is None:
            raise UpsRefused(404, f"no workitem {uid}")
        return item

    def guarded(request: Request, work: Any) -> Response:
        try:
            authorised(request.headers)
            result = work()
        except UpsRefused as exc:
            return refused(exc)
        return result if isinstance(result, Response) else JSONResponse(result)

    # -- create (§11.4) ---------------------------------------------------
    @router.post("/workitems")
    async def create(request: Request) -> Response:
        raw = await request.body()
        return guarded(request, lambda: _create(request, raw))

    def _create(request: Request, raw: bytes) -> Response:
        extra = set(request.query_params) - {"workitem"}
        if extra:
            raise UpsRefused(400, f"unknown query parameter {', '.join(sorted(extra))}")
        ds = {k.upper(): v for k, v in _body(raw).items()}
        _unknown(ds, _CREATE_KEYS)
        uid = request.query_params.get("workitem") or _text(_first(ds, SOP_INSTANCE))
        uid = uid or generate_uid()
        if state.workitem(uid) is not None:
            raise UpsRefused(409, f"workitem {uid} exists already")
        if _text(_first(ds, STATE)) not in ("", "SCHEDULED"):
            raise UpsRefused(400, "a workitem is created SCHEDULED (0074,1000)")
        priority = _text(_first(ds, PRIORITY)) or "MEDIUM"
        if priority not in PRIORITY_RANK:
            raise UpsRefused(400, f"priority (0074,1200) {priority!r} is not HIGH, MEDIUM or LOW")
        algorithm_id = _algorithm(ds)
        study_uid, accession = _study(ds)
        if not study_uid and accession:
            study_uid = state.study_with_accession(accession) or ""
        held = bool(study_uid) and bool(state.instances(study_uid))
        request_id: int | None = None
        if not held and ctx.settings is not None and ctx.settings.query_retrieve:
            study_uid, request_id = _pull(
                ctx.settings,
                state,
                uid,
                algorithm_id,
                priority,
                study_uid,
                accession,
                requested_priors(ctx.hub, algorithm_id),
            )
        elif not study_uid:
            raise UpsRefused(
                404,
                f"no study with accession {accession} is held by this edge and no"
                " [[query_retrieve]] peer is configured to pull it; send it from PACS"
                " (or name its Study Instance UID: the workitem then waits for it)",
            )
        if request_id is None:
            # a study the PACS pushed before: its priors pulled now, before the request
            priors = (
                held_study_priors(
                    ctx.settings,
                    state,
                    study_uid,
                    algorithm_id,
                    requested_priors(ctx.hub, algorithm_id),
                )
                if held and ctx.settings is not None and ctx.settings.query_retrieve
                else []
            )
            request_id = state.add_request(
                study_uid,
                algorithm_id,
                f"workitem {uid}",
                priority=priority,
                prior_study_uids=priors,
            )
        ds[SOP_CLASS] = _attr(SOP_CLASS, UPS_PUSH)
        ds[SOP_INSTANCE] = _attr(SOP_INSTANCE, uid)
        ds[STATE] = _attr(STATE, "SCHEDULED")
        ds[PRIORITY] = _attr(PRIORITY, priority)
        if not _items(ds, INPUT_INFO):
            ds[INPUT_INFO] = {"vr": "SQ", "Value": [{STUDY: _attr(STUDY, study_uid)}]}
        state.add_workitem(uid, study_uid, algorithm_id, priority, ds, request_id=request_id)
        state.record_event(
            "workitem-created",
            f"UPS workitem {uid}: {algorithm_id}, priority {priority}"
            + ("" if held else "; the study is not held yet: it goes when received"),
        )
        location = f"{str(request.base_url).rstrip('/')}/workitems/{uid}"
        return Response(status_code=201, headers={"Location": location})

    # -- retrieve (§11.5), update (§11.6) ------------------------------------
    @router.get("/workitems/{uid}")
    def retrieve(uid: str, request: Request) -> Response:
        def work() -> Response:
            if request.query_params:
                raise UpsRefused(400, "Retrieve Workitem takes no query parameters")
            return JSONResponse([_view(found(uid))], media_type="application/dicom+json")

        return guarded(request, work)

    @router.post("/workitems/{uid}")
    async def update(uid: str, request: Request) -> Response:
        raw = await request.body()

        def work() -> Response:
            item = found(uid)
            ds = {k.upper(): v for k, v in _body(raw).items()}
            _unknown(ds, _UPDATE_KEYS)
            current = ups_state(state, item)
            if current in _FINAL:
                raise UpsRefused(400, f"workitem {uid} is {current}; it cannot be updated")
            if current == "IN PROGRESS" and _text(_first(ds, TRANSACTION)) != (
                item["transaction_uid"] or ""
            ):
                raise UpsRefused(400, "an IN PROGRESS workitem is updated with its Transaction UID")
            ds.pop(TRANSACTION, None)
            dataset = {**item["dataset"], **ds}
            priority = _text(_first(dataset, PRIORITY)) or "MEDIUM"
            if priority not in PRIORITY_RANK:
                raise UpsRefused(
                    400, f"priority (0074,1200) {priority!r} is not HIGH, MEDIUM or LOW"
                )
            state.update_workitem(uid, dataset=dataset, priority=priority)
            task_id = _task_id(state, item)
            if task_id is not None:
                state.update_task(task_id, priority=PRIORITY_RANK[priority])
            return Response(status_code=200)

        return guarded(request, work)

    # -- search (§11.9) ----------------------------------------------------
    @router.get("/workitems")
    def search(request: Request) -> Response:
        def work() -> Response:
            params = request.query_params
            unknown = sorted(
                k for k in params if k not in _SEARCH_KEYS and k not in _SEARCH_CONTROLS
            )
            if unknown:
                raise UpsRefused(
                    400,
                    f"unknown search key {', '.join(unknown)}; this Task Manager matches on "
                    "ProcedureStepState, ScheduledProcedureStepPriority, SOPInstanceUID, "
                    "StudyInstanceUID, AccessionNumber, ScheduledWorkitemCodeSequence.CodeValue",
                )
            if params.get("fuzzymatching", "false") != "false":
                raise UpsRefused(400, "fuzzy matching is not supported")
            limit, offset = _int(params, "limit", 100), _int(params, "offset", 0)
            wanted = {_SEARCH_KEYS[k]: v for k, v in params.items() if k in _SEARCH_KEYS}
            views = [v for v in map(_view, state.workitems()) if _matches(v, wanted)]
            views = views[offset : offset + limit]
            if not views:
                return Response(status_code=204)
            return JSONResponse(views, media_type="application/dicom+json")

        return guarded(request, work)

    # -- change state (§11.7) ----------------------------------------------
    @router.put("/workitems/{uid}/state")
    async def change_state(uid: str, request: Request) -> Response:
        raw = await request.body()

        def work() -> Response:
            item = found(uid)
            ds = {k.upper(): v for k, v in _body(raw).items()}
            _unknown(ds, frozenset({STATE, TRANSACTION}))
            wanted, transaction = _text(_first(ds, STATE)), _text(_first(ds, TRANSACTION))
            if not transaction:
                raise UpsRefused(400, "Change State needs the Transaction UID (0008,1195)")
            current = ups_state(state, item)
            if current in _FINAL:
                raise UpsRefused(409, f"workitem {uid} is already {current}")
            if wanted == "IN PROGRESS":
                if current == "IN PROGRESS":
                    raise UpsRefused(409, f"workitem {uid} is already IN PROGRESS (claimed)")
                state.update_workitem(uid, state="IN PROGRESS", transaction_uid=transaction)
                return Response(status_code=200)
            if wanted not in _FINAL:
                raise UpsRefused(
                    400, f"(0074,1000) {wanted!r} is not IN PROGRESS, COMPLETED or CANCELED"
                )
            if transaction != (item["transaction_uid"] or ""):
                raise UpsRefused(
                    400, "the Transaction UID does not match the claim of this workitem"
                )
            if wanted == "COMPLETED":
                raise UpsRefused(
                    409, f"workitem {uid} is completed by the edge once its results are in PACS"
                )
            _cancel(item, "canceled by its performer")
            return Response(status_code=200)

        return guarded(request, work)

    def _cancel(item: dict[str, Any], reason: str) -> None:
        task_id = _task_id(state, item)
        if task_id is None and item["request_id"] is not None:
            state.fulfil_request(int(item["request_id"]), "")  # the assembler no longer answers it
        if task_id is not None:
            task = state.task(task_id)
            if task.state not in ("delivered", "CANCELED", "failed", "discarded"):
                state.update_task(task_id, state="CANCELED", reason=reason)
                state.record_event("task-canceled", reason, task_id=task_id)
        dataset = dict(item["dataset"])
        dataset[PROGRESS] = {
            "vr": "SQ",
            "Value": [
                {
                    CANCEL_REASON: _attr(CANCEL_REASON, reason),
                    CANCEL_AT: _attr(CANCEL_AT, time.strftime("%Y%m%d%H%M%S")),
                }
            ],
        }
        state.update_workitem(item["uid"], state="CANCELED", cancel_reason=reason, dataset=dataset)

    # -- request cancellation (§11.8) --------------------------------------
    @router.post("/workitems/{uid}/cancelrequest")
    async def cancel_request(uid: str, request: Request) -> Response:
        raw = await request.body()

        def work() -> Response:
            item = found(uid)
            ds = {k.upper(): v for k, v in _body(raw or b"{}").items()}
            _unknown(ds, frozenset({CANCEL_REASON, "00741236", "00741242", "00741240", "00404031"}))
            current = ups_state(state, item)
            if current in _FINAL:
                raise UpsRefused(409, f"workitem {uid} is already {current}")
            reason = _text(_first(ds, CANCEL_REASON)) or "cancellation requested"
            _cancel(item, f"canceled at the Task Requester's request: {reason}")
            return Response(status_code=202)

        return guarded(request, work)

    # -- subscriptions (§11.10) ----------------------------------------------
    @router.post("/workitems/{uid}/subscribers/{aet}")
    def subscribe(uid: str, aet: str, request: Request) -> Response:
        def work() -> Response:
            _subscriber_checks(uid, aet, request)
            state.set_subscription("*" if uid == GLOBAL_SUBSCRIPTION else uid, aet, True)
            ws = str(request.base_url).replace("http", "ws", 1).rstrip("/")
            return Response(
                status_code=201, headers={"Content-Location": f"{ws}/ws/subscribers/{aet}"}
            )

        return guarded(request, work)

    @router.post("/workitems/{uid}/subscribers/{aet}/suspend")
    def suspend(uid: str, aet: str, request: Request) -> Response:
        def work() -> Response:
            if uid != GLOBAL_SUBSCRIPTION:
                raise UpsRefused(400, "only the global subscription is suspended")
            state.set_subscription("*", aet, False)
            return Response(status_code=200)

        return guarded(request, work)

    @router.delete("/workitems/{uid}/subscribers/{aet}")
    def unsubscribe(uid: str, aet: str, request: Request) -> Response:
        def work() -> Response:
            if uid == GLOBAL_SUBSCRIPTION:  # ends every subscription of the AE (PS3.4 CC.2.3.2)
                for one in state.subscribed_workitems(aet)[1]:
                    state.set_subscription(one, aet, False)
                state.set_subscription("*", aet, False)
            else:
                found(uid)
                state.set_subscription(uid, aet, False)
            return Response(status_code=200)

        return guarded(request, work)

    def _subscriber_checks(uid: str, aet: str, request: Request) -> None:
        if not 0 < len(aet) <= 16 or "\\" in aet:
            raise UpsRefused(400, f"{aet!r} is not an AE title (1 to 16 characters, PS3.5 AE)")
        if uid == _FILTERED_GLOBAL:
            raise UpsRefused(400, "filtered global subscriptions are not supported")
        extra = set(request.query_params) - {"deletionlock"}
        if extra:
            raise UpsRefused(400, f"unknown query parameter {', '.join(sorted(extra))}")
        if uid != GLOBAL_SUBSCRIPTION:
            found(uid)

    # -- event reports (§11.11) ----------------------------------------------
    @router.websocket("/ws/subscribers/{aet}")
    async def events(websocket: WebSocket, aet: str) -> None:
        try:
            authorised(websocket.headers)
        except UpsRefused:
            await websocket.close(code=1008)
            return
        await websocket.accept()
        sent: dict[str, str] = {}
        try:
            while True:
                for report in await asyncio.to_thread(_reports, aet, sent):
                    await websocket.send_text(json.dumps(report))
                try:  # the subscriber sends nothing; this notices it leaving
                    message = await asyncio.wait_for(websocket.receive(), timeout=_POLL_S)
                except TimeoutError:
                    continue
                if message["type"] == "websocket.disconnect":
                    return
        except (WebSocketDisconnect, RuntimeError):
            return

    def _reports(aet: str, sent: dict[str, str]) -> list[dict[str, Any]]:
        every, uids = state.subscribed_workitems(aet)
        items = state.workitems() if every else [i for u in uids if (i := state.workitem(u))]
        out: list[dict[str, Any]] = []
        for item in items:
            now = ups_state(state, item)
            for step in _path(sent.get(item["uid"]), now, bool(item["transaction_uid"])):
                out.append(_state_report(item, step))
            sent[item["uid"]] = now
        return out

    def _view(item: dict[str, Any]) -> dict[str, Any]:
        """The workitem as DICOM JSON (the Transaction UID is never returned, PS3.4 CC.2.5.1.2)."""
        ds = {k: v for k, v in item["dataset"].items() if not k.startswith("x-")}
        current = ups_state(state, item)
        ds[STATE] = _attr(STATE, current)
        ds[PRIORITY] = _attr(PRIORITY, item["priority"])
        held = bool(state.instances(item["study_instance_uid"]))
        ds[READINESS] = _attr(READINESS, "READY" if held else "INCOMPLETE")
        if current == "COMPLETED":
            ds[PERFORMED] = {"vr": "SQ", "Value": [{OUTPUT_INFO: _outputs(item)}]}
        return ds

    def _outputs(item: dict[str, Any]) -> dict[str, Any]:
        """Output Information Sequence: the results stored in PACS (PS3.3 Table 10-3b)."""
        cached = item["dataset"].get(f"x-{OUTPUT_INFO}")
        if cached is not None:
            return dict(cached)
        task_id = _task_id(state, item)
        if task_id is None:
            return {"vr": "SQ", "Value": []}
        task = state.task(task_id)
        stored = {uid for uid, status in state.deliveries(task_id).items() if status == "stored"}
        refs = []
        try:
            if task.hub_task_id is not None:
                refs = [
                    r
                    for r in ctx.hub.task(task.hub_task_id).results
                    if r.sop_instance_uid in stored
                ]
        except HubError as exc:  # answered without them this time; asked again next time
            logger.warning(
                "workitem %s: result references not read from the hub: %s", item["uid"], exc
            )
            return {"vr": "SQ", "Value": []}
        series: dict[str, list[Any]] = {}
        for ref in refs:
            series.setdefault(ref.series_instance_uid, []).append(ref)
        value = []
        for series_uid, members in series.items():
            entry: dict[str, Any] = {
                "0040E020": {"vr": "CS", "Value": ["DICOM"]},  # Type of Instances
                STUDY: _attr(STUDY, item["study_instance_uid"]),
                SERIES: _attr(SERIES, series_uid),
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
            if ctx.retrieve_ae_title:
                entry["00080054"] = {"vr": "AE", "Value": [ctx.retrieve_ae_title]}
            value.append(entry)
        outputs = {"vr": "SQ", "Value": value}
        if value:
            state.update_workitem(
                item["uid"], dataset={**item["dataset"], f"x-{OUTPUT_INFO}": outputs}
            )
        return outputs

    return router


def _state_report(item: dict[str, Any], step: str) -> dict[str, Any]:
    """A UPS State Report (PS3.4 CC.2.4.3, Event Type ID 1) as DICOM JSON."""
    report = {
        "00000002": {"vr": "UI", "Value": [UPS_PUSH]},  # Affected SOP Class UID
        "00001000": {"vr": "UI", "Value": [item["uid"]]},  # Affected SOP Instance UID
        "00001002": {"vr": "US", "Value": [1]},  # Event Type ID: UPS State Report
        STATE: _attr(STATE, step),
        READINESS: _attr(READINESS, "READY"),
    }
    if step == "CANCELED" and item.get("cancel_reason"):
        report[CANCEL_REASON] = _attr(CANCEL_REASON, item["cancel_reason"])
    return report


def _algorithm(ds: dict[str, Any]) -> str:
    codes = _items(ds, WORKITEM_CODE)
    if len(codes) != 1:
        raise UpsRefused(
            400, "Scheduled Workitem Code Sequence (0040,4018) must name one algorithm"
        )
    code, scheme = _text(_first(codes[0], CODE_VALUE)), _text(_first(codes[0], SCHEME_TAG))
    if not code or scheme != SCHEME:
        raise UpsRefused(
            400,
            f"the algorithm is a code value (0008,0100) with coding scheme {SCHEME!r}"
            f" (0008,0102), e.g. bone-age; got {code!r} in {scheme!r}",
        )
    return code


def _study(ds: dict[str, Any]) -> tuple[str, str]:
    """(Study Instance UID, Accession Number) the workitem names, either may be ``""``."""
    candidates = [ds, *_items(ds, INPUT_INFO), *_items(ds, REQUEST)]
    uid = next((u for p in candidates if (u := _text(_first(p, STUDY)))), "")
    accession = next((a for p in candidates if (a := _text(_first(p, ACCESSION)))), "")
    if uid or accession:
        return uid, accession
    raise UpsRefused(
        400,
        "name the study: Study Instance UID (0020,000D) or Accession Number (0008,0050) in"
        " Input Information Sequence (0040,4021) or Referenced Request Sequence (0040,A370)",
    )


def _pull(
    settings: EdgeSettings,
    state: EdgeState,
    uid: str,
    algorithm_id: str,
    priority: str,
    study_uid: str,
    accession: str,
    priors: Priors | None,
) -> tuple[str, int | None]:
    """Pull a study the edge does not hold from the first peer that has it (aifi.edge.pull).

    The request for the algorithm is recorded by the pull itself, with the
    priors the hub's catalog says the algorithm asks for, pulled first. A study
    no peer has is a 404; a peer that fails is a 502 with its reason.
    """
    from aifi.edge.pull import pull_study

    problems: list[str] = []
    for peer in settings.query_retrieve:
        outcome = pull_study(
            settings,
            peer,
            accession=None if study_uid else accession,
            study_uid=study_uid or None,
            algorithm_id=algorithm_id,
            requested_by=f"workitem {uid}",
            priority=priority,
            priors=priors,
            state=state,
        )
        if outcome.ok and outcome.study_instance_uid:
            return outcome.study_instance_uid, outcome.request_id
        problems.append(outcome.detail)
        if outcome.status == "failed" and outcome.request_id is not None:
            return str(outcome.study_instance_uid), outcome.request_id
    which = f"study {study_uid}" if study_uid else f"accession {accession}"
    raise UpsRefused(404, f"{which} is neither held nor found to pull: " + "; ".join(problems))


def _int(params: Any, key: str, default: int) -> int:
    text = params.get(key)
    if text is None:
        return default
    if not text.isdigit():
        raise UpsRefused(400, f"{key} must be a whole number, not {text!r}")
    return int(text)


def _values(ds: dict[str, Any], tag: str) -> Iterator[str]:
    """Every value of ``tag`` at the top level or one sequence down."""
    for key, element in ds.items():
        if key == tag:
            yield from (_text(v) for v in element.get("Value") or [])
        elif isinstance(element, dict) and element.get("vr") == "SQ":
            for item in element.get("Value") or []:
                if isinstance(item, dict) and tag in item:
                    yield from (_text(v) for v in item[tag].get("Value") or [])


def _matches(view: dict[str, Any], wanted: dict[str, str]) -> bool:
    """Single value matching (PS3.4 C.2.2.2.1), a list of UIDs for UIDs; values compare exactly."""
    for tag, value in wanted.items():
        accepted = set(value.split(",")) if tag in (SOP_INSTANCE, STUDY) else {value}
        if not accepted & set(_values(view, tag)):
            return False
    return True
