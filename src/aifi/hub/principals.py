"""Principals (who calls the hub) and their bearer tokens.

A token is 32 random bytes, shown once; the hub keeps only its SHA-256. A
principal may hold several valid tokens at once, which is how a token is
rotated without downtime: issue a new one, move the edge to it, revoke the
old one.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aifi.errors import ConfigError
from aifi.hub.auditing import record
from aifi.hub.models import Principal, Token, utcnow
from aifi.protocol.schemas import Role

__all__ = [
    "add_principal",
    "find_by_token",
    "find_principal",
    "hash_token",
    "issue_token",
    "list_principals",
    "revoke_token",
]


def hash_token(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def find_by_token(session: Session, token: str) -> Principal | None:
    """The principal holding ``token`` if it is not revoked."""
    found = session.scalar(
        select(Token).where(Token.token_sha256 == hash_token(token), Token.revoked_at.is_(None))
    )
    return None if found is None else found.principal


def issue_token(
    session: Session, principal: Principal, *, actor: str, commit: bool = True
) -> tuple[Token, str]:
    """A new token for ``principal`` (earlier ones stay valid); audits, and commits.

    ``commit=False``: the token and its ``token.issued`` are only flushed, for a
    caller that commits them with more (:func:`aifi.hub.hospitals.add_hospital`).
    """
    secret = secrets.token_urlsafe(32)
    token = Token(principal_id=principal.id, token_sha256=hash_token(secret))
    session.add(token)
    session.flush()  # the token's id, for its event
    record(
        session,
        "token.issued",
        actor=actor,
        hospital=principal.hospital_id,
        detail={"principal": principal.id, "role": principal.role, "token": token.id},
    )
    if commit:
        session.commit()
    return token, secret


def revoke_token(session: Session, token_id: str, *, actor: str) -> Token:
    """Revoke one token at once; idempotent. :class:`ConfigError` when unknown."""
    token = session.get(Token, token_id)
    if token is None:
        raise ConfigError(f"no token {token_id}; list tokens with 'aifi hub token list'")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        record(
            session,
            "token.revoked",
            actor=actor,
            hospital=token.principal.hospital_id,
            detail={"principal": token.principal_id, "token": token.id},
        )
        session.commit()
    return token


def add_principal(
    session: Session,
    name: str,
    role: Role,
    *,
    actor: str,
    hospital_id: str | None = None,
    commit: bool = True,
) -> Principal:
    """A new principal (audits, and commits); ``hospital_id`` exactly for role hospital.

    ``commit=False``: flushed with its ``principal.added``, for a caller that
    commits them with more. A twin name rolls the session's transaction back
    (with whatever the caller wrote in it) and raises :class:`ConfigError`.
    """
    name = name.strip()
    if not name or len(name) > 200:
        raise ConfigError("a principal name needs 1 to 200 characters")
    if (role is Role.HOSPITAL) != (hospital_id is not None):
        raise ConfigError("a principal acts for a hospital exactly when its role is 'hospital'")
    principal = Principal(name=name, role=role.value, hospital_id=hospital_id)
    session.add(principal)
    try:
        session.flush()  # the principal's id, for its event; a twin name fails here
    except IntegrityError as exc:
        session.rollback()
        raise ConfigError(f"the name {name!r} is already registered; choose another") from exc
    record(
        session,
        "principal.added",
        actor=actor,
        hospital=hospital_id,
        detail={"principal": principal.id, "role": role.value},
    )
    if commit:
        session.commit()
    return principal


def list_principals(session: Session) -> list[Principal]:
    """All principals, by name."""
    return list(session.scalars(select(Principal).order_by(Principal.name)))


def find_principal(session: Session, name_or_id: str) -> Principal:
    """The principal with this id or name; :class:`ConfigError` when there is none."""
    found = session.get(Principal, name_or_id) or session.scalar(
        select(Principal).where(Principal.name == name_or_id)
    )
    if found is None:
        raise ConfigError(f"no principal {name_or_id!r}; see 'aifi hub token list'")
    return found
