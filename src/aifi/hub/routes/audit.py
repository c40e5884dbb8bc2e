"""``/audit`` and ``/usage``: read-only views for auditors (and operators)."""

from __future__ import annotations

import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import PlainTextResponse

from aifi.errors import ConfigError
from aifi.hub.auditing import audit_log
from aifi.hub.auth import Reader
from aifi.hub.deps import ContextDep, SessionDep
from aifi.hub.usage import usage, usage_csv
from aifi.protocol.schemas import AuditEventOut, UsageRow

__all__ = ["router"]

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=list[AuditEventOut])
def list_events(
    _reader: Reader,
    context: ContextDep,
    hospital_id: str | None = None,
    action: str | None = None,
    after_seq: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # SQL's largest INTEGER
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[AuditEventOut]:
    """Audit events in chain order, optionally one hospital's or one action's."""
    events = audit_log(context.engine).events(
        hospital=hospital_id, action=action, after_seq=after_seq, limit=limit
    )
    return [AuditEventOut.model_validate(e.as_json()) for e in events]


@router.get("/audit/verify")
def verify(_reader: Reader, context: ContextDep) -> dict[str, Any]:
    """Check the whole chain: ``intact`` and every problem with its sequence number."""
    log = audit_log(context.engine)
    problems = log.verify()
    head = log.head()
    return {
        "intact": not problems,
        "problems": problems,
        "head": None if head is None else {"seq": head.seq, "hash": head.hash},
    }


@router.get("/audit/export", response_class=PlainTextResponse)
def export(_reader: Reader, context: ContextDep) -> PlainTextResponse:
    """The whole chain as JSON lines (verify it offline with ``aifi audit verify --jsonl``)."""
    out = io.StringIO()
    audit_log(context.engine).export_jsonl(out)
    return PlainTextResponse(out.getvalue(), media_type="application/x-ndjson")


@router.get("/usage", response_model=list[UsageRow])
def read_usage(
    _reader: Reader,
    session: SessionDep,
    month: Annotated[str, Query(pattern=r"^\d{4}-\d{2}$", examples=["2026-11"])],
    format: Literal["json", "csv"] = "json",
) -> Any:
    """Per hospital by algorithm for one month: studies, instances, bytes, compute, outcomes."""
    try:
        rows = usage(session, month)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    if format == "csv":
        return PlainTextResponse(usage_csv(rows), media_type="text/csv")
    return rows
