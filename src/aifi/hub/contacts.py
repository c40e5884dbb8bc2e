"""When each hospital's edge last called the hub, and which version it runs.

The authentication gate notes every authenticated request of a hospital
principal; the row is written at most once per :data:`EVERY` per hospital
and process, so polling edges do not turn every GET into a write. The edge
names its version in ``User-Agent`` (``aifi-edge/<version>``); another
client's User-Agent is kept as it came, cut to 200 characters.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from aifi.hub.models import HospitalContact, utcnow

__all__ = ["EVERY", "edge_version", "note_contact"]

logger = logging.getLogger(__name__)

EVERY = 60.0
"""Seconds between two writes of one hospital's last contact (per process)."""

_written: dict[str, float] = {}
_lock = threading.Lock()


def note_contact(session: Session, hospital_id: str, user_agent: str | None) -> None:
    """Record that ``hospital_id`` called now (throttled; never fails the request)."""
    now = time.monotonic()
    with _lock:
        if now - _written.get(hospital_id, -EVERY) < EVERY:
            return
        _written[hospital_id] = now
    try:
        row = session.get(HospitalContact, hospital_id)
        if row is None:
            row = HospitalContact(hospital_id=hospital_id)
            session.add(row)
        row.last_seen_at = utcnow()
        row.user_agent = (user_agent or "")[:200] or None
        session.commit()
    except SQLAlchemyError as exc:  # a busy database must not refuse the edge's request
        session.rollback()
        with _lock:
            _written.pop(hospital_id, None)
        logger.debug("last contact of hospital %s not recorded: %s", hospital_id, exc)


def edge_version(user_agent: str | None) -> str | None:
    """The version an ``aifi-edge/<version>`` User-Agent names, else the User-Agent itself."""
    if not user_agent:
        return None
    for word in user_agent.split():
        name, _, version = word.partition("/")
        if name == "aifi-edge" and version:
            return version
    return user_agent
