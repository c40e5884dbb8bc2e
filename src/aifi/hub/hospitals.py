"""Register hospitals (tenants), their principal and first token.

A new hospital is subscribed by default to ``integrity-check`` under the
agreement reference ``connection-test``, open-ended: that algorithm only
checks that pixel data arrived intact, so it serves as the connection test
an edge runs right after installation, before any clinical agreement is
signed. Pass ``subscribe=()`` to register a hospital without it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aifi.errors import ConfigError
from aifi.hub.auditing import record
from aifi.hub.models import Hospital, Principal
from aifi.hub.principals import add_principal, hash_token, issue_token
from aifi.hub.subscriptions import CONNECTION_TEST, add_subscription
from aifi.protocol.schemas import Role

__all__ = [
    "CONNECTION_TEST_ALGORITHMS",
    "add_hospital",
    "find_hospital",
    "hash_token",
    "list_hospitals",
    "principal_of",
]

CONNECTION_TEST_ALGORITHMS: tuple[str, ...] = ("integrity-check",)
"""What a new hospital is subscribed to unless told otherwise (see the module docstring)."""

OPERATOR_ACTOR = "operator"


def add_hospital(
    session: Session,
    name: str,
    *,
    subscribe: Sequence[str] = CONNECTION_TEST_ALGORITHMS,
    actor: str = OPERATOR_ACTOR,
) -> tuple[Hospital, str]:
    """Register ``name`` and return it with its first token (the only time it is visible).

    Each algorithm id in ``subscribe`` gets a connection-test subscription.
    One transaction: the hospital, its principal, its first token and its
    subscriptions are committed together with their events
    (``hospital.added``, ``principal.added``, ``token.issued``,
    ``subscription.added`` each), or — on any failure, which is raised —
    none of them is.
    """
    name = name.strip()
    if not name or len(name) > 200:
        raise ConfigError("a hospital name needs 1 to 200 characters")
    hospital = Hospital(name=name)
    session.add(hospital)
    try:
        session.flush()  # the hospital's id, for its event; a twin name fails here
    except IntegrityError as exc:
        session.rollback()
        raise ConfigError(
            f"a hospital named {name!r} is already registered; choose another name"
        ) from exc
    try:
        record(session, "hospital.added", actor=actor, hospital=hospital.id)
        principal = add_principal(
            session, name, Role.HOSPITAL, actor=actor, hospital_id=hospital.id, commit=False
        )
        _token, secret = issue_token(session, principal, actor=actor, commit=False)
        for algorithm_id in dict.fromkeys(subscribe):
            add_subscription(
                session,
                hospital_id=hospital.id,
                algorithm_id=algorithm_id,
                agreement_reference=CONNECTION_TEST,
                controller=name,
                processor="aifi hub operator",
                actor=actor,
                commit=False,
            )
        session.commit()
    except Exception:
        session.rollback()  # nothing of the hospital stays, nor any of its events
        raise
    return hospital, secret


def principal_of(session: Session, hospital_id: str) -> Principal | None:
    """The principal that acts for ``hospital_id``."""
    return session.scalar(select(Principal).where(Principal.hospital_id == hospital_id))


def list_hospitals(session: Session) -> list[Hospital]:
    """All registered hospitals, by name."""
    return list(session.scalars(select(Hospital).order_by(Hospital.name)))


def find_hospital(session: Session, name_or_id: str) -> Hospital:
    """The hospital with this id or name; :class:`ConfigError` when there is none."""
    found = session.get(Hospital, name_or_id) or session.scalar(
        select(Hospital).where(Hospital.name == name_or_id)
    )
    if found is None:
        raise ConfigError(f"no hospital {name_or_id!r}; see 'aifi hub hospital list'")
    return found
