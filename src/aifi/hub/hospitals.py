"""Register hospitals (tenants) and issue their bearer tokens.

A token is 32 random bytes, shown once; the hub keeps only its SHA-256.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aifi.errors import ConfigError
from aifi.hub.models import Hospital

__all__ = ["add_hospital", "hash_token", "list_hospitals"]


def hash_token(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_hospital(session: Session, name: str) -> tuple[Hospital, str]:
    """Register ``name`` and return it with its new token (the only time it is visible)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ConfigError("a hospital name needs 1 to 200 characters")
    token = secrets.token_urlsafe(32)
    hospital = Hospital(name=name, token_sha256=hash_token(token))
    session.add(hospital)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ConfigError(
            f"a hospital named {name!r} is already registered; choose another name"
        ) from exc
    return hospital, token


def list_hospitals(session: Session) -> list[Hospital]:
    """All registered hospitals, by name."""
    return list(session.scalars(select(Hospital).order_by(Hospital.name)))
