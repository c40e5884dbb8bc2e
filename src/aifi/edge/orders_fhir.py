"""FHIR R4 orders: ``POST /fhir/ServiceRequest`` on the edge's web server.

A ServiceRequest (FHIR R4 §ServiceRequest, validated with fhir.resources'
R4B models, which read R4 ServiceRequests alike) becomes an
:class:`aifi.edge.orders.Order`:

==================  ==========================================================
order control       ``status``: active → new; revoked, entered-in-error → cancel
order number        ``identifier`` of type PLAC (v2-0203), else FILL, else ``id``
accession number    ``identifier`` of type ACSN (v2-0203), as IHE RAD-4/FHIR do
Study Instance UID  ``identifier`` with system ``urn:dicom:uid`` (``urn:oid:...``)
procedure code      ``code.coding[].code``, mapped by ``[orders] codes``
priority            ``priority``: stat, asap, urgent → HIGH; routine → MEDIUM
==================  ==========================================================

Answers: 201 with ``Location: .../fhir/ServiceRequest/{id}`` (the id is the
workitem's UID) and the resource; a cancel answers 200; anything not taken
is a 4xx with an OperationOutcome saying why. ``GET`` of that Location
gives the request with its current ``status`` (active, completed, revoked).
Every call needs ``Authorization: Bearer <status.admin_password>``, as UPS-RS.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from aifi.edge.orders import ORDER_KEY, Order, OrderDesk, order_priority

__all__ = ["create_orders_router"]

FHIR_JSON = "application/fhir+json"
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_NEW = ("active",)
_CANCEL = ("revoked", "entered-in-error")
_INTENTS = ("order", "original-order", "reflex-order", "filler-order", "instance-order")


class _Refused(Exception):
    """A request answered with an OperationOutcome; internal to this module."""

    def __init__(self, status_code: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status_code, self.code, self.diagnostics = status_code, code, diagnostics


def _outcome(exc: _Refused) -> JSONResponse:
    """An OperationOutcome (FHIR R4 §OperationOutcome) with one issue."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": exc.code, "diagnostics": exc.diagnostics}],
    }
    return JSONResponse(body, status_code=exc.status_code, media_type=FHIR_JSON)


def create_orders_router(desk: OrderDesk, token: str | None) -> APIRouter:
    """The FHIR ServiceRequest routes, mounted on the edge's local web server."""
    router = APIRouter(tags=["fhir-orders"])

    def authorised(request: Request) -> None:
        if token is None:
            raise _Refused(403, "forbidden", "set [status] admin_password to take FHIR orders")
        given = str(request.headers.get("authorization") or "")
        if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise _Refused(401, "login", "send Authorization: Bearer <the edge's admin password>")

    @router.post("/fhir/ServiceRequest")
    async def create(request: Request) -> Response:
        raw = await request.body()
        try:
            authorised(request)
            resource, order = _read(raw, desk)
            answer = desk.take(order, keep={"fhir": resource} if order.control != "CA" else None)
        except _Refused as exc:
            return _outcome(exc)
        if not answer.accepted or answer.workitem_uid is None:
            status = 404 if order.control == "CA" else 422
            return _outcome(
                _Refused(status, "not-found" if status == 404 else "value", answer.detail)
            )
        location = f"{str(request.base_url).rstrip('/')}/fhir/ServiceRequest/{answer.workitem_uid}"
        if order.control == "CA":
            return JSONResponse(
                {**resource, "id": answer.workitem_uid}, status_code=200, media_type=FHIR_JSON
            )
        return JSONResponse(
            {**resource, "id": answer.workitem_uid},
            status_code=201,
            headers={"Location": location},
            media_type=FHIR_JSON,
        )

    @router.get("/fhir/ServiceRequest/{uid}")
    def read(uid: str, request: Request) -> Response:
        try:
            authorised(request)
            item = desk.state.workitem(uid)
            if item is None or ORDER_KEY not in item["dataset"]:
                raise _Refused(404, "not-found", f"no ServiceRequest {uid} at this edge")
        except _Refused as exc:
            return _outcome(exc)
        from aifi.edge.ups import ups_state

        resource = dict(item["dataset"][ORDER_KEY].get("fhir") or {})
        resource.setdefault("resourceType", "ServiceRequest")
        resource.setdefault("intent", "order")
        resource["id"] = uid
        state = ups_state(desk.state, item)
        resource["status"] = {"COMPLETED": "completed", "CANCELED": "revoked"}.get(state, "active")
        return JSONResponse(resource, media_type=FHIR_JSON)

    return router


def _read(raw: bytes, desk: OrderDesk) -> tuple[dict[str, Any], Order]:
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise _Refused(400, "structure", f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("resourceType") != "ServiceRequest":
        raise _Refused(400, "structure", "the body must be one FHIR ServiceRequest resource")
    try:
        resource = ServiceRequest.model_validate(body)
    except ValidationError as exc:  # fhir.resources' errors, translated once here
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'ServiceRequest'}: {e['msg']}"
            for e in exc.errors()
        )
        raise _Refused(400, "invalid", f"not a valid ServiceRequest: {problems}") from exc
    if resource.status in _NEW:
        control = "NW"
    elif resource.status in _CANCEL:
        control = "CA"
    else:
        raise _Refused(
            422, "not-supported", f"status {resource.status!r}: send active (or revoked to cancel)"
        )
    if resource.intent not in _INTENTS:
        raise _Refused(
            422, "not-supported", f"intent {resource.intent!r}: an order is taken, not a proposal"
        )
    identifiers = resource.identifier or []

    def typed(code: str) -> str:
        for ident in identifiers:
            codings = (ident.type.coding or []) if ident.type is not None else []
            if any(c.code == code and c.system in (None, _V2_0203) for c in codings):
                return str(ident.value or "").strip()
        return ""

    study_uid = next(
        (
            str(i.value or "").removeprefix("urn:oid:").strip()
            for i in identifiers
            if i.system == "urn:dicom:uid"
        ),
        "",
    )
    codes = tuple(
        str(c.code) for c in (resource.code.coding or [] if resource.code else []) if c.code
    )
    order = Order(
        control=control,  # type: ignore[arg-type]  # "NW" or "CA", checked above
        order_number=typed("PLAC") or typed("FILL") or str(resource.id or ""),
        accession=typed("ACSN"),
        study_instance_uid=study_uid,
        codes=codes,
        priority=order_priority(str(resource.priority or "routine")),
        source="FHIR ServiceRequest",
    )
    return body, order
