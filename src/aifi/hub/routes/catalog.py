"""``/catalog``: the algorithms this hub offers, and operators changing their state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status

from aifi.errors import ConfigError
from aifi.hub import catalog
from aifi.hub.auth import Operator, RoleGate, actor_of
from aifi.hub.deps import SessionDep
from aifi.hub.models import CatalogEntry, Principal
from aifi.protocol.schemas import (
    AlgorithmState,
    CatalogEntryOut,
    CatalogStateChange,
    PriorsRequest,
    Role,
)

__all__ = ["entry_out", "router"]

router = APIRouter(prefix="/catalog", tags=["catalog"])

AnyRole = Annotated[Principal, Depends(RoleGate(Role.HOSPITAL, Role.OPERATOR, Role.AUDITOR))]


def entry_out(entry: CatalogEntry) -> CatalogEntryOut:
    return CatalogEntryOut(
        algorithm_id=entry.algorithm_id,
        version=entry.version,
        name=entry.name,
        vendor=entry.vendor,
        intended_use=entry.intended_use,
        regulatory_status=entry.regulatory_status,
        keep_attributes=list(entry.keep_attributes or ()),
        priors=PriorsRequest.model_validate(entry.priors) if entry.priors else None,
        state=AlgorithmState(entry.state),
        registered_at=entry.registered_at,
    )


@router.get("", response_model=list[CatalogEntryOut])
def list_catalog(_principal: AnyRole, session: SessionDep) -> list[CatalogEntryOut]:
    """Every algorithm version, with vendor, intended use, regulatory status and state."""
    return [entry_out(e) for e in catalog.list_catalog(session)]


@router.post("/{algorithm_id}/{version}/state", response_model=CatalogEntryOut)
def change_state(
    algorithm_id: str,
    version: str,
    body: CatalogStateChange,
    operator: Operator,
    session: SessionDep,
) -> CatalogEntryOut:
    """Suspend, retire or re-activate one version (a suspended version takes no new tasks)."""
    try:
        entry = catalog.set_state(
            session, algorithm_id, version, body.state, actor=actor_of(operator), reason=body.reason
        )
    except ConfigError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    return entry_out(entry)
