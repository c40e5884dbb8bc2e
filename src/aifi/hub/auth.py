"""Who is calling: the hospital (tenant) behind a bearer token.

Every route that touches data depends on :data:`CurrentHospital`, and every
query it makes filters on that hospital's id. Tokens are compared by their
SHA-256 with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from aifi.hub.deps import SessionDep
from aifi.hub.hospitals import hash_token
from aifi.hub.models import Hospital

__all__ = ["CurrentHospital", "current_hospital"]

_bearer = HTTPBearer(auto_error=False, description="the token printed by 'aifi hub hospital add'")


def current_hospital(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Hospital:
    """The calling hospital, or 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("send Authorization: Bearer <hospital token>")
    digest = hash_token(credentials.credentials)
    hospital = session.scalar(select(Hospital).where(Hospital.token_sha256 == digest))
    if hospital is None or not hmac.compare_digest(hospital.token_sha256, digest):
        raise _unauthorized("unknown token; use the token printed by 'aifi hub hospital add'")
    return hospital


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


CurrentHospital = Annotated[Hospital, Depends(current_hospital)]
