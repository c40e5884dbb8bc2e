"""``/hospitals``, ``/principals``, ``/tokens``: tenants and credentials (operators only).

Tokens are shown once, in the answer that issues them. Rotation without
downtime: ``POST /principals/{id}/tokens`` issues a new token while the old
one stays valid; ``DELETE /tokens/{id}`` revokes the old one when the edge
has moved.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select

from aifi.errors import ConfigError
from aifi.hub import hospitals, principals
from aifi.hub.auth import Operator, Reader, actor_of
from aifi.hub.db import retrying
from aifi.hub.deps import ContextDep, SessionDep
from aifi.hub.models import Principal, Token
from aifi.protocol.schemas import (
    HospitalCreate,
    HospitalOut,
    IssuedToken,
    PrincipalCreate,
    PrincipalOut,
    Role,
    TokenInfo,
)

__all__ = ["principal_out", "router"]

router = APIRouter(tags=["credentials"])


def principal_out(session: SessionDep, principal: Principal) -> PrincipalOut:
    tokens = session.scalars(
        select(Token).where(Token.principal_id == principal.id).order_by(Token.created_at)
    )
    return PrincipalOut(
        id=principal.id,
        name=principal.name,
        role=Role(principal.role),
        hospital_id=principal.hospital_id,
        tokens=[
            TokenInfo(id=t.id, created_at=t.created_at, revoked_at=t.revoked_at) for t in tokens
        ],
    )


@router.get("/hospitals", response_model=list[HospitalOut])
def list_hospitals(_reader: Reader, session: SessionDep) -> list[HospitalOut]:
    """Registered hospitals (never their tokens)."""
    found = []
    for hospital in hospitals.list_hospitals(session):
        principal = hospitals.principal_of(session, hospital.id)
        found.append(
            HospitalOut(
                id=hospital.id,
                name=hospital.name,
                created_at=hospital.created_at,
                principal_id=principal.id if principal else None,
            )
        )
    return found


@router.post("/hospitals", response_model=IssuedToken, status_code=status.HTTP_201_CREATED)
def add_hospital(body: HospitalCreate, operator: Operator, session: SessionDep) -> IssuedToken:
    """Register a hospital; its first token is in this answer only."""
    subscribe = hospitals.CONNECTION_TEST_ALGORITHMS if body.subscribe is None else body.subscribe
    try:
        hospital, secret = hospitals.add_hospital(
            session, body.name, subscribe=subscribe, actor=actor_of(operator)
        )
    except ConfigError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    principal = hospitals.principal_of(session, hospital.id)
    assert principal is not None
    token = session.scalar(select(Token).where(Token.principal_id == principal.id))
    assert token is not None
    return IssuedToken(
        principal_id=principal.id, token_id=token.id, token=secret, hospital_id=hospital.id
    )


@router.get("/principals", response_model=list[PrincipalOut])
def list_principals(_operator: Operator, session: SessionDep) -> list[PrincipalOut]:
    """Every principal with its tokens' records."""
    return [principal_out(session, p) for p in principals.list_principals(session)]


@router.post("/principals", response_model=IssuedToken, status_code=status.HTTP_201_CREATED)
def add_principal(body: PrincipalCreate, operator: Operator, session: SessionDep) -> IssuedToken:
    """Add an operator or auditor; hospitals are added with ``POST /hospitals``."""
    if body.role is Role.HOSPITAL:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail="add hospitals with POST /hospitals"
        )
    try:
        principal = principals.add_principal(  # committed with its first token, below
            session, body.name, body.role, actor=actor_of(operator), commit=False
        )
    except ConfigError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    token, secret = principals.issue_token(session, principal, actor=actor_of(operator))
    return IssuedToken(principal_id=principal.id, token_id=token.id, token=secret)


@router.post(
    "/principals/{principal_id}/tokens",
    response_model=IssuedToken,
    status_code=status.HTTP_201_CREATED,
)
def rotate_token(principal_id: str, operator: Operator, session: SessionDep) -> IssuedToken:
    """Issue another token; the earlier ones stay valid until revoked."""
    principal = session.get(Principal, principal_id)
    if principal is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no principal {principal_id}")
    token, secret = principals.issue_token(session, principal, actor=actor_of(operator))
    return IssuedToken(
        principal_id=principal.id,
        token_id=token.id,
        token=secret,
        hospital_id=principal.hospital_id,
    )


@router.delete("/tokens/{token_id}", response_model=TokenInfo)
def revoke_token(token_id: str, operator: Operator, context: ContextDep) -> TokenInfo:
    """Revoke a token now; requests with it get 401 from then on.

    Revoking is idempotent, so a transient database failure runs it again
    (:func:`aifi.hub.db.retrying`); adding hospitals, principals and tokens
    is not (a retry after a lost commit would answer 409 or issue a second
    token), so those are not retried.
    """
    actor = actor_of(operator)
    try:
        token = retrying(
            context.sessions, lambda s: principals.revoke_token(s, token_id, actor=actor)
        )
    except ConfigError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    return TokenInfo(id=token.id, created_at=token.created_at, revoked_at=token.revoked_at)
