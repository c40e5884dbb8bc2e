"""Logins to the status page: the admin password exchanged for a session cookie, CSRF tokens.

The session token and its CSRF token are random (``secrets``), held in
memory only (a restart logs everyone out) and expire after
``status.session_hours``. Every state-changing form carries the session's
CSRF token; the cookie is HttpOnly and SameSite=Strict.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass

__all__ = ["COOKIE", "Session", "Sessions"]

COOKIE = "aifi_edge_session"


@dataclass(frozen=True)
class Session:
    token: str
    csrf: str
    expires_at: float

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class Sessions:
    """The live sessions of one status page."""

    def __init__(self, password: str | None, lifetime_s: float) -> None:
        """``password`` None: no admin is configured and every login is refused."""
        self.enabled = bool(password)
        self._password = (password or "").encode()
        self.lifetime_s = lifetime_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def login(self, password: str) -> Session | None:
        """A new session when ``password`` is the admin's, else None."""
        if not self.enabled or not hmac.compare_digest(password.encode(), self._password):
            return None
        session = Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time() + self.lifetime_s
        )
        with self._lock:
            now = time.time()
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}
            self._sessions[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(token)
        if session is None or session.expires_at <= time.time():
            return None
        return session

    def logout(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)
