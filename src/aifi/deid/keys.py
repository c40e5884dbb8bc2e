"""The hospital's secret and everything derived from it with HMAC-SHA256.

The secret never leaves the edge. UIDs become ``2.25`` UIDs (PS3.5 B.2:
a UUID-derived integer under the root 2.25), identifiers become keyed
pseudonyms, and dates shift by a keyed per-patient number of days. The same
input and key always give the same output, so re-sending a study gives the
same pseudonymous study and two studies of one patient share a pseudonym;
another hospital's key gives unrelated values.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from aifi.errors import ConfigError

__all__ = [
    "KEY_BYTES",
    "date_shift_days",
    "keyed_digest",
    "load_key",
    "load_or_create_key",
    "pseudo_uid",
    "pseudonym",
]

logger = logging.getLogger(__name__)

KEY_BYTES = 32
#: Dates move back by 1 to 10 years, never zero (so an unshifted date never passes as shifted).
_SHIFT_MIN_DAYS = 365
_SHIFT_SPAN_DAYS = 3287


def keyed_digest(key: bytes, purpose: bytes, value: str) -> bytes:
    """HMAC-SHA256 of ``value`` under ``key``, separated by ``purpose`` (``b"uid"``, ...)."""
    return hmac.new(key, purpose + b":" + value.encode("utf-8"), hashlib.sha256).digest()


@functools.lru_cache(maxsize=8192)
def pseudo_uid(key: bytes, uid: str) -> str:
    """The pseudonymous UID for ``uid``: ``2.25.`` and a 128-bit keyed integer (≤ 44 chars)."""
    number = int.from_bytes(keyed_digest(key, b"uid", uid.strip().rstrip("\0"))[:16], "big")
    return f"2.25.{number}"


@functools.lru_cache(maxsize=8192)
def pseudonym(key: bytes, kind: str, value: str, *, length: int = 16) -> str:
    """A keyed pseudonym for an identifier (PatientID, AccessionNumber): upper-case base32.

    ``kind`` separates name spaces ("patient", "accession"); ``length`` fits
    the VR (16 for SH, up to 64 for LO).
    """
    digest = keyed_digest(key, kind.encode("ascii"), value.strip())
    return base64.b32encode(digest[: (length * 5 + 7) // 8]).decode("ascii")[:length]


@functools.lru_cache(maxsize=8192)
def date_shift_days(key: bytes, patient_key: str) -> int:
    """Days to subtract from every date of one patient (Modified Dates option, PS3.15 E.3.6)."""
    digest = keyed_digest(key, b"dateshift", patient_key.strip())
    return _SHIFT_MIN_DAYS + int.from_bytes(digest[:4], "big") % _SHIFT_SPAN_DAYS


def load_key(path: Path, environ: Mapping[str, str] | None = None, *, var: str = "") -> bytes:
    """The hospital's key: from the environment variable ``var`` when set, else from ``path``.

    The variable holds the 32 bytes base64 (or hex) encoded, as a secret store
    or KMS agent injects it; nothing is written then. Otherwise the key file
    at ``path`` is read, or created (mode 0600) when absent.
    """
    environ = os.environ if environ is None else environ
    encoded = environ.get(var, "").strip() if var else ""
    if not encoded:
        return load_or_create_key(path)
    data: bytes | None = None
    try:
        data = bytes.fromhex(encoded)
    except ValueError:
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            data = None
    if data is None or len(data) != KEY_BYTES:
        raise ConfigError(
            f"{var} does not hold a {KEY_BYTES}-byte key in base64 or hex; "
            "set it to the hospital's key (e.g. base64 of the key file)"
        )
    return data


def load_or_create_key(path: Path) -> bytes:
    """Read the hospital's 32-byte secret from ``path``, creating it (mode 0600) when absent."""
    path = Path(path)
    if path.exists():
        data = path.read_bytes()
        if len(data) != KEY_BYTES:
            raise ConfigError(
                f"key file {path} holds {len(data)} bytes, expected {KEY_BYTES}: "
                "restore the hospital's key file from backup or point to the right one"
            )
        if path.stat().st_mode & 0o077:
            logger.warning("key file %s is readable by others; run: chmod 600 %s", path, path)
        return data
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    logger.info("created a new pseudonymization key at %s; back it up", path)
    return data
