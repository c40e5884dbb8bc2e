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
    chain: Annotated[
        str | None,
        Query(max_length=80, description="one chain: hospital:<id>, hub, or main (before 0008)"),
    ] = None,
    after_seq: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # SQL's largest INTEGER
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[AuditEventOut]:
    """Audit events: one chain in chain order, or all in the order they were recorded.

    ``after_seq`` pages on within the chain named by ``chain``.
    """
    if after_seq and chain is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail="after_seq pages on within one chain; name it with chain= "
            "(hospital:<id>, hub or main)",
        )
    events = audit_log(context.engine).events(
        chain=chain, hospital=hospital_id, action=action, after_seq=after_seq, limit=limit
    )
    return [AuditEventOut.model_validate(e.as_json()) for e in events]


@router.get("/audit/verify")
def verify(_reader: Reader, context: ContextDep) -> dict[str, Any]:
    """Check every chain: ``intact``, each problem with its chain and sequence number.

    ``head`` seals the whole trail (events of all chains, SHA-256 over every
    chain's head); ``chains`` gives each chain's own head; ``pending`` counts
    events committed but not sealed into their chain yet (the janitor seals
    what a stopped process left).
    """
    log = audit_log(context.engine)
    problems = log.verify()
    heads = log.heads()
    head = log.head()
    return {
        "intact": not problems,
        "problems": problems,
        "head": None if head is None else {"seq": head.seq, "hash": head.hash},
        "events": log.count(),
        "pending": log.pending(),
        "chains": {name: {"seq": h.seq, "hash": h.hash} for name, h in sorted(heads.items())},
    }


@router.get("/audit/export", response_class=PlainTextResponse)
def export(
    _reader: Reader,
    context: ContextDep,
    hospital_id: str | None = None,
    chain: Annotated[str | None, Query(max_length=80)] = None,
) -> PlainTextResponse:
    """The trail as JSON lines, chain after chain (verify it offline with
    ``aifi audit verify --jsonl``; one hospital's chain verifies on its own)."""
    out = io.StringIO()
    audit_log(context.engine).export_jsonl(out, hospital=hospital_id, chain=chain)
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
