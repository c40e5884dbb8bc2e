"""Console sessions: a bearer token exchanged once for a signed cookie, and CSRF tokens.

A person logs in with the token the hub already issued them (operator,
auditor or a hospital's token); the hub answers with a cookie holding the
principal id, the id of the token used, a CSRF token and the time it was
made, signed with HMAC-SHA256 under a per-hub key. The cookie is HttpOnly
(no script reads it), SameSite=Strict (no other site sends it) and Secure
in production. Every request checks the signature, the age
(:data:`MAX_AGE_S`) and that the token is still valid, so revoking the
token ends the session. Every form carries the session's CSRF token in a
hidden field, compared on POST.

The key lives in ``console_secret_file`` (default ``<data_dir>/console-secret``),
made owner-only on first start; replicas of one hub share the file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from aifi.errors import ConfigError

__all__ = [
    "COOKIE",
    "LOGIN_COOKIE",
    "MAX_AGE_S",
    "ConsoleSession",
    "SessionSigner",
    "csrf_matches",
    "load_secret",
]

COOKIE = "aifi_console"
LOGIN_COOKIE = "aifi_console_login"  # the login form's own CSRF value (double submit)
MAX_AGE_S = 8 * 3600


@dataclass(frozen=True)
class ConsoleSession:
    principal_id: str
    token_id: str
    csrf: str
    issued_at: float


class SessionSigner:
    """Signs and checks console cookies with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the console key needs at least 32 bytes")
        self._key = key

    def issue(self, principal_id: str, token_id: str) -> tuple[str, ConsoleSession]:
        session = ConsoleSession(principal_id, token_id, secrets.token_urlsafe(24), time.time())
        payload = json.dumps(
            [session.principal_id, session.token_id, session.csrf, session.issued_at]
        ).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{body}.{self._sign(body)}", session

    def read(self, cookie: str | None, *, now: float | None = None) -> ConsoleSession | None:
        """The session in ``cookie``, or None if it is absent, forged, malformed or too old."""
        if not cookie or "." not in cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            principal_id, token_id, csrf, issued_at = json.loads(
                base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            )
            session = ConsoleSession(str(principal_id), str(token_id), str(csrf), float(issued_at))
        except (ValueError, TypeError):
            return None
        age = (now or time.time()) - session.issued_at
        return session if 0 <= age <= MAX_AGE_S else None

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def csrf_matches(expected: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(expected, sent or "")


def load_secret(path: Path) -> bytes:
    """The console key in ``path``, made (32 random bytes, mode 0600) when missing."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return load_secret(path)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        return key
    except OSError as exc:
        raise ConfigError(f"cannot read the console key {path}: {exc.strerror}") from exc
    if len(key) < 32:
        raise ConfigError(
            f"the console key {path} holds {len(key)} bytes; it needs 32 (delete it to make one)"
        )
    return key
