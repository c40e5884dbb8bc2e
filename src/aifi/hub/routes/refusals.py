"""``/refusals``: instances refused at STOW-RS, with their reasons (never an identity).

The reason names attributes by keyword and tag, never a value
(:mod:`aifi.hub.ingest`); the Failure Reason is PS3.18 Table I.2-2's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from aifi.hub.auth import CurrentHospital, Reader
from aifi.hub.deps import SessionDep
from aifi.hub.models import Refusal

__all__ = ["router"]

router = APIRouter(prefix="/refusals", tags=["refusals"])


class RefusalOut(BaseModel):
    id: int
    hospital_id: str
    sop_instance_uid: str | None
    failure_reason: str  # four hex digits, as PS3.18 Table I.2-2 writes them
    reason: str
    created_at: datetime


def _out(r: Refusal) -> RefusalOut:
    return RefusalOut(
        id=r.id,
        hospital_id=r.hospital_id,
        sop_instance_uid=r.sop_instance_uid,
        failure_reason=f"{r.failure_reason:04X}",
        reason=r.reason,
        created_at=r.created_at,
    )


Limit = Annotated[int, Query(ge=1, le=10000)]


def _list(session: SessionDep, hospital_id: str | None, limit: int) -> list[RefusalOut]:
    query = select(Refusal).order_by(Refusal.created_at.desc(), Refusal.id.desc()).limit(limit)
    if hospital_id is not None:
        query = query.where(Refusal.hospital_id == hospital_id)
    return [_out(r) for r in session.scalars(query)]


@router.get("", response_model=list[RefusalOut])
def list_refusals(
    _reader: Reader, session: SessionDep, hospital_id: str | None = None, limit: Limit = 1000
) -> list[RefusalOut]:
    """Refusals newest first, of all hospitals or one."""
    return _list(session, hospital_id, limit)


@router.get("/mine", response_model=list[RefusalOut])
def my_refusals(
    hospital: CurrentHospital, session: SessionDep, limit: Limit = 1000
) -> list[RefusalOut]:
    """The calling hospital's own refusals (what its edge sent that the hub would not keep)."""
    return _list(session, hospital.id, limit)
