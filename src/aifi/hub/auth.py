"""Who is calling, and may they: principals behind bearer tokens, and their roles.

Every route depends on exactly one role gate. :data:`CurrentHospital`
admits only principals of role ``hospital`` and yields their hospital;
every query a hospital route makes filters on that hospital's id.
:data:`Operator` and :data:`Reader` admit operators, and auditors or
operators. No token, or an unknown or revoked one: 401. A known token of
the wrong role: 403. Tokens are looked up by their SHA-256 only (the
hub never stores a token), and a revoked token is refused at once.

:func:`declare_roles` writes each route's roles into the OpenAPI document
(``x-aifi-roles``), so tests can walk every route and check its gate.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError

from aifi.hub.contacts import note_contact
from aifi.hub.db import is_transient
from aifi.hub.deps import SessionDep
from aifi.hub.models import Hospital, Principal
from aifi.hub.principals import find_by_token
from aifi.protocol.schemas import Role

__all__ = [
    "CurrentHospital",
    "CurrentPrincipal",
    "Operator",
    "Reader",
    "RoleGate",
    "actor_of",
    "current_principal",
    "declare_roles",
]

_bearer = HTTPBearer(
    auto_error=False, description="a token printed by 'aifi hub hospital add' or 'operator add'"
)


def current_principal(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The calling principal, or 401; a hospital's call is noted as its edge's last contact."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("send Authorization: Bearer <token>")
    try:
        principal = find_by_token(session, credentials.credentials)
    except DBAPIError as exc:  # a pooled connection the server dropped: a read, asked again
        if not is_transient(exc):
            raise
        session.rollback()
        principal = find_by_token(session, credentials.credentials)
    if principal is None:
        raise _unauthorized(
            "unknown or revoked token; use a token printed by 'aifi hub hospital add', "
            "'aifi hub operator add' or 'aifi hub token rotate'"
        )
    if principal.hospital_id is not None:
        note_contact(session, principal.hospital_id, request.headers.get("user-agent"))
    # End the read: the connection goes back to the pool until the route asks again (the
    # route may run later, in another thread, or wait: GET /tasks long polls).
    session.commit()
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


class RoleGate:
    """A dependency admitting principals of the given roles (403 for others)."""

    def __init__(self, *roles: Role) -> None:
        self.roles = frozenset(roles)

    async def __call__(self, principal: CurrentPrincipal) -> Principal:  # no I/O: no pool thread
        if principal.role not in self.roles:
            allowed = " or ".join(sorted(r.value for r in self.roles))
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"this needs the role {allowed}; your token is of role {principal.role}",
            )
        return principal


_hospital_gate = RoleGate(Role.HOSPITAL)


async def current_hospital(principal: Annotated[Principal, Depends(_hospital_gate)]) -> Hospital:
    """The hospital the calling principal acts for."""
    if principal.hospital is None:  # a broken invariant: role hospital without one
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this token acts for no hospital")
    return principal.hospital


CurrentHospital = Annotated[Hospital, Depends(current_hospital)]
Operator = Annotated[Principal, Depends(RoleGate(Role.OPERATOR))]
Reader = Annotated[Principal, Depends(RoleGate(Role.AUDITOR, Role.OPERATOR))]


def actor_of(principal: Principal) -> str:
    """How the audit trail names a principal (role and id, no personal name)."""
    return f"{principal.role}:{principal.id}"


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def declare_roles(router: APIRouter) -> APIRouter:
    """Write each route's admitted roles into its OpenAPI operation as ``x-aifi-roles``.

    Call it on a router before it is included. A route without a gate is
    declared ``["public"]``.
    """
    for route in router.routes:
        if isinstance(route, APIRoute):
            roles = sorted(_gate_roles(route.dependant)) or ["public"]
            route.openapi_extra = {**(route.openapi_extra or {}), "x-aifi-roles": roles}
    return router


def _gate_roles(dependant: Dependant) -> set[str]:
    roles: set[str] = set()
    for sub in dependant.dependencies:
        if isinstance(sub.call, RoleGate):
            roles |= {r.value for r in sub.call.roles}
        roles |= _gate_roles(sub)
    return roles
